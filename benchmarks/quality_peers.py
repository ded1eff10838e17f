"""Section 4's peers: diffusers' DPM-Solver++(2M) and UniPC loops on the exact mixture oracle.

Optional: `available()` says whether torch and diffusers import; both are imported lazily, so
section 4 runs without them (and reports the peers as skipped).

The loops use the same N = 1000 schedule (`trained_betas` = its betas: diffusers' own
`beta_schedule="linear"` with beta 0.1/N .. 20/N is the DDPM discretisation, whose alphas_cumprod
differ from the VP SDE's $\\exp(-\\int\\beta)$), the same prior draws and the exact eps oracle
(called through NumPy at every step). diffusers' timestep $t$ is the schedule's index $t + 1$.
"""

import numpy as np

N = 1000

# name -> (scheduler class name, config, end point, the scoredyn row it should reproduce)
PEERS = {
    "diffusers DPM-Solver++(2M)": (
        "DPMSolverMultistepScheduler",
        dict(solver_order=2, algorithm_type="dpmsolver++", final_sigmas_type="sigma_min"),
        "t_eps",
        "DPM-Solver++(2M)",
    ),
    "diffusers DPM-Solver++(2M), default final_sigmas_type=zero": (
        "DPMSolverMultistepScheduler",
        dict(solver_order=2, algorithm_type="dpmsolver++"),
        "zero",
        None,
    ),
    "diffusers UniPC-2 bh2": (
        "UniPCMultistepScheduler",
        dict(solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min"),
        "t_eps",
        "UniPC-2 bh2",
    ),
}


def available() -> tuple[bool, str]:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return False, f"{type(e).__name__}: {e}"
    return True, ""


def versions() -> dict:
    import diffusers
    import torch

    return {"torch": torch.__version__, "diffusers": diffusers.__version__}


def _linear_betas_rel(alpha_bar: np.ndarray) -> float:
    """Largest relative difference between diffusers' linear betas (0.1/N .. 20/N, in float64)
    and the schedule's alphas_cumprod."""
    betas = np.linspace(0.1 / N, 20.0 / N, N)
    ab = np.cumprod(1.0 - betas)
    return float(np.max(np.abs(ab / alpha_bar - 1.0)))


def run(*, betas, alpha_bar, eps, x_T, nfes, log=print) -> dict:
    """Each peer at each NFE from `x_T` (NumPy, float64). `eps(timestep, x)` is the oracle at
    diffusers' `timestep` (NumPy in and out). Returns `{"rows": {name: {"end", "twin", "x":
    {nfe: array}}}, "linear_betas_max_rel": ...}`."""
    import diffusers
    import torch

    from ._common import num_cpus

    torch.set_num_threads(num_cpus())
    rows = {}
    for name, (cls_name, cfg, end, twin) in PEERS.items():
        cls = getattr(diffusers, cls_name)
        xs = {}
        for nfe in nfes:
            sch = cls(num_train_timesteps=N, trained_betas=np.asarray(betas, np.float64), **cfg)
            sch.set_timesteps(nfe)
            x = torch.from_numpy(np.array(x_T, np.float64))
            with torch.inference_mode():
                for t in sch.timesteps:
                    e = torch.from_numpy(np.array(eps(int(t), x.numpy()), np.float64))
                    x = sch.step(e, t, x).prev_sample
            xs[nfe] = x.numpy().astype(np.float64)
        rows[name] = {"end": end, "twin": twin, "x": xs}
        log(f"{name}: NFE {', '.join(str(n) for n in nfes)} done")
    return {"rows": rows, "linear_betas_max_rel": _linear_betas_rel(np.asarray(alpha_bar))}
