"""Section 6: batches. `sd.sample_batch` (one noise draw per step for the whole batch) and the
fixed-step reverse SDE against hand-written batched loops, `sd.BatchedNet`, and shared against
per-example step control for an adaptive ODE solve over a batch."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import scoredyn as sd

from ._common import (
    BenchMLP,
    md_table,
    median,
    min_ratio,
    mixture_2d,
    paired_ratio,
    time_features,
    time_interleaved,
)
from .overhead import _coefficients

N = 1000
DIM = 64


class BatchedMLP(BenchMLP):
    """The benchmark MLP written for batches, `(t_batch, x_batch) -> eps_batch`: the same
    weights and maths as `BenchMLP`, as matrix products over the batch (research-code style)."""

    def __init__(self, net: BenchMLP):
        self.layers = net.layers
        self.time_dim = net.time_dim

    def __call__(self, t, x):
        feats = jax.vmap(lambda s: time_features(s, self.time_dim, x.dtype))(t)
        h = jnp.concatenate([x, feats], axis=1)
        for lin in self.layers:
            assert lin.bias is not None
            h = h @ lin.weight.T + lin.bias
            h = h if lin is self.layers[-1] else jax.nn.silu(h)
        return h


# ------------------------------------------------------------------------ (b), (c): DDPM
def make_sample_batch(process, grid, solver, *, batched_net: bool = False):
    """`sd.sample_batch` over the batch, jitted; the network is an argument."""

    @jax.jit
    def run(net, key, x_T):
        inner = sd.BatchedNet(BatchedMLP(net)) if batched_net else net
        return sd.sample_batch(key, process, sd.EpsModel(inner), solver, grid, x_T).x

    return run


def make_vmap_sample(process, grid, solver):
    """`jax.vmap` of `sd.sample` with one key per example (the per-example path)."""

    @jax.jit
    def run(net, key, x_T):
        keys = jax.random.split(key, x_T.shape[0])
        f = lambda k, x: sd.sample(k, process, sd.EpsModel(net), solver, grid, x).x
        return jax.vmap(f)(keys, x_T)

    return run


def make_vmap_sample_sde(sde, K: int):
    """`jax.vmap` of `sd.sample_sde` with its defaults (fixed steps: the tree-free
    Euler–Maruyama path) and one key per example; it draws its own prior `x_T`."""

    @jax.jit
    def run(net, key, x_T):
        keys = jax.random.split(key, x_T.shape[0])
        score = lambda t, x: sd.EpsModel(net).score(sde, t, x)
        f = lambda k: sd.sample_sde(k, sde, score, x_T.shape[1:], num_steps=K, dtype=x_T.dtype)
        return jax.vmap(f)(keys)

    return run


def make_hand_ddpm(coeffs):
    """The hand-written batched DDPM loop of section 1 (`lax.scan`, one
    `jax.random.normal(k, (B, d))` per step), with the step keys of `sd.sample_batch`:
    `fold_in(key, k)` for the pair k = K-1, ..., 0, so that the two draw the same noise."""
    t, a, b, std = coeffs  # in scan order, k = K-1 .. 0
    K = t.shape[0]

    @jax.jit
    def hand(net, key, x_T):
        batched = jax.vmap(net, in_axes=(None, 0))

        def body(x, s):
            t, a, b, std, k = s
            x = a * x + b * batched(t, x)
            return x + std * jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype), None

        return lax.scan(body, x_T, (t, a, b, std, jnp.arange(K - 1, -1, -1)))[0]

    return hand


# ------------------------------------------------------------------------ (a): reverse SDE
def em_coefficients(sde, grid):
    """Per-step (t, h, f, g, sigma, noise std) in float64 NumPy, then float32: the reverse-SDE
    Euler–Maruyama step x <- x - h (f x + g^2 eps / sigma) + g sqrt(h) z, no noise on the last
    step (the default `sd.EulerMaruyama()`)."""
    grid = np.asarray(grid, np.float64)
    t, t_next = grid[:-1], grid[1:]
    h = t - t_next
    f, g = (np.asarray(v, np.float64) for v in jax.vmap(sde.coefficients)(jnp.asarray(t)))
    sigma = np.asarray(jax.vmap(sde.marginal)(jnp.asarray(t))[1], np.float64)
    std = g * np.sqrt(h)
    std[-1] = 0.0
    return tuple(jnp.asarray(a, jnp.float32) for a in (t, h, f, g, sigma, std))


def make_hand_em(coeffs):
    """A plain Euler–Maruyama `lax.scan` over the batch: one Gaussian draw per step
    (`fold_in(key, i)`, shape `(B, d)`), no Brownian tree."""
    t, h, f, g, sigma, std = coeffs
    K = t.shape[0]

    @jax.jit
    def hand(net, key, x_T):
        batched = jax.vmap(net, in_axes=(None, 0))

        def body(x, s):
            i, t, h, f, g, sigma, std = s
            eps = batched(t, x)
            x = x - h * (f * x + g**2 * eps / sigma)
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            return x + std * z, None

        xs = (jnp.arange(K), t, h, f, g, sigma, std)
        return lax.scan(body, x_T, xs)[0]

    return hand


# ------------------------------------------------------------------------ (d): shared steps
def narrow_mixture(dtype=jnp.float64):
    """A 2-D mixture whose difficulty sits in a few examples: 98 % of the mass in a broad
    component, 2 % in a narrow one (std 0.01), where the flow needs small steps at the end."""
    w = jnp.array([0.98, 0.02], dtype)
    m = jnp.array([[0.0, 0.0], [2.0, 2.0]], dtype)
    c = jnp.stack([0.5 * jnp.eye(2, dtype=dtype), 1e-4 * jnp.eye(2, dtype=dtype)])
    return sd.toy.GaussianMixture(w, m, c)


def _ode_setup(gm, B: int):
    import diffrax

    sde = sd.VPSDE()
    model = sd.ScoreModel(gm.score_fn(sde))
    grid = jnp.array([sde.T, 1e-3])
    x_T = sde.prior_sample(jax.random.key(3), (B, 2), jnp.float64)
    tight = sd.ODE(stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10))
    ref = sd.sample_batch(None, sde, model, tight, grid, x_T).x

    def make(shared: bool, rtol: float):
        ctrl = diffrax.PIDController(rtol=rtol, atol=rtol)
        solver = sd.ODE(stepsize_controller=ctrl, shared_steps=shared)
        return jax.jit(lambda x: sd.sample_batch(None, sde, model, solver, grid, x))

    return x_T, ref, make


def _ode_stats(res, ref) -> dict:
    err = np.linalg.norm(np.asarray(res.x - ref), axis=1)
    return {
        "nfe_mean": float(np.mean(np.asarray(res.stats["nfe"]))),
        "nfe_max": float(np.max(np.asarray(res.stats["nfe"]))),
        "err_max": float(err.max()),
        "err_rms": float(np.sqrt(np.mean(err**2))),
        "err_p99": float(np.quantile(err, 0.99)),
    }


def ode_control(B: int, *, rtol: float = 1e-5, log=print) -> dict:
    """Per-example and shared step control for the PF-ODE of the 2-D mixture (VP, exact score,
    float64) over a batch of B prior draws: wall time, NFE and per-example error against a
    reference solved per example at rtol = atol = 1e-10."""
    with jax.enable_x64(True):
        x_T, ref, make = _ode_setup(mixture_2d(jnp.float64), B)
        fns = {"per-example": make(False, rtol), "shared": make(True, rtol)}
        out: dict = {name: _ode_stats(fn(x_T), ref) for name, fn in fns.items()}
        wrap = {k: (lambda f: lambda x: f(x).x)(f) for k, f in fns.items()}
        times = time_interleaved(wrap, {k: (x_T,) for k in fns}, repeats=5, budget_s=6.0)
        for name in fns:
            out[name]["ms"] = 1e3 * median(times[name])
        out["shared_vs_per_example"] = paired_ratio(times["shared"], times["per-example"])
    log(
        f"  [6] ODE B={B:5d}: per-example {out['per-example']['ms']:.1f} ms, shared "
        f"{out['shared']['ms']:.1f} ms, max err {out['per-example']['err_max']:.1e} / "
        f"{out['shared']['err_max']:.1e}"
    )
    return {"B": B, "rtol": rtol, **out}


def ode_accuracy(B: int = 512, rtols=(1e-3, 1e-4, 1e-5), log=print) -> list:
    """NFE and per-example error (no timing) of both controls over tolerances, on the 2-D
    mixture and on `narrow_mixture` (difficulty in 2 % of the examples)."""
    rows = []
    with jax.enable_x64(True):
        for oracle, gm in (("mixture", mixture_2d(jnp.float64)), ("narrow", narrow_mixture())):
            x_T, ref, make = _ode_setup(gm, B)
            for rtol in rtols:
                for shared in (False, True):
                    st = _ode_stats(make(shared, rtol)(x_T), ref)
                    rows.append({"oracle": oracle, "rtol": rtol, "shared": shared, **st})
            log(f"  [6] ODE accuracy sweep on {oracle} done")
    return rows


def run(
    *,
    batches=(16, 512, 4096),
    K: int = 50,
    repeats: int = 5,
    budget_s: float = 10.0,
    ode_batches=(512, 4096),
    cheap_batches=(16, 512, 4096),
    log=print,
) -> dict:
    key = jax.random.key(0)
    net = BenchMLP(DIM, key=jax.random.key(1))
    sched = sd.DiscreteSchedule.linear(N, dtype=jnp.float32)
    tau = sd.respace(N, K)
    sde = sd.VPSDE()
    grid = np.linspace(sde.T, 1e-3, K + 1).astype(np.float32)
    grid[-1] = np.float32(1e-3)
    grid = jnp.asarray(grid)
    rows = []
    for B in batches:
        x_T = jax.random.normal(jax.random.key(2), (B, DIM), jnp.float32)
        fns = {
            "hand DDPM": make_hand_ddpm(_coefficients(sched, tau, "ddpm")),
            "DDPM sample_batch": make_sample_batch(sched, tau, sd.DDPM()),
            "DDPM sample_batch + BatchedNet": make_sample_batch(
                sched, tau, sd.DDPM(), batched_net=True
            ),
            "DDPM vmap(sample)": make_vmap_sample(sched, tau, sd.DDPM()),
            "hand EM": make_hand_em(em_coefficients(sde, grid)),
            "EM sample_batch": make_sample_batch(sde, grid, sd.EulerMaruyama()),
            "EM vmap(sample)": make_vmap_sample(sde, grid, sd.EulerMaruyama()),
            "vmap(sample_sde)": make_vmap_sample_sde(sde, K),
            "DiffraxSDE vmap(sample)": make_vmap_sample(sde, grid, sd.DiffraxSDE()),
        }
        args = {name: (net, key, x_T) for name in fns}
        # correctness: the batched DDPM and EM equal their hand loops to float32 rounding
        err = {}
        for ours, hand in (("DDPM sample_batch", "hand DDPM"), ("EM sample_batch", "hand EM")):
            a, b = fns[ours](*args[ours]), fns[hand](*args[hand])
            err[ours] = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        cpu: dict = {}
        times = time_interleaved(fns, args, repeats=repeats, budget_s=budget_s, cpu_out=cpu)
        pairs = [(n, "hand DDPM") for n in fns if n.startswith("DDPM")]
        pairs += [(n, "hand EM") for n in fns if n.startswith(("EM", "Diffrax", "vmap(sample_sde"))]
        row = {
            "B": B,
            "K": K,
            "rounds": len(times["hand DDPM"]),
            "ms": {n: 1e3 * median(v) for n, v in times.items()},
            "vs_hand": {n: paired_ratio(times[n], times[h]) for n, h in pairs},
            "vs_hand_min": {n: min_ratio(times[n], times[h]) for n, h in pairs},
            "cpu_vs_hand": {n: paired_ratio(cpu[n], cpu[h]) for n, h in pairs},
            "err": err,
        }
        rows.append(row)
        log(
            f"  [6] B={B:5d} K={K}: "
            + ", ".join(f"{n} x{v:.3f}" for n, v in row["vs_hand"].items())
        )
    # a cheap network (width 16, one hidden layer), where the Gaussian draws weigh most
    cheap_net = BenchMLP(DIM, width=16, depth=1, time_dim=4, key=jax.random.key(1))
    cheap = []
    for B in cheap_batches:
        x_T = jax.random.normal(jax.random.key(2), (B, DIM), jnp.float32)
        fns = {
            "hand DDPM": make_hand_ddpm(_coefficients(sched, tau, "ddpm")),
            "DDPM sample_batch": make_sample_batch(sched, tau, sd.DDPM()),
            "DDPM vmap(sample)": make_vmap_sample(sched, tau, sd.DDPM()),
        }
        cpu = {}
        times = time_interleaved(
            fns,
            {n: (cheap_net, key, x_T) for n in fns},
            repeats=max(repeats, 9),
            budget_s=budget_s,
            cpu_out=cpu,
        )
        names = ("DDPM sample_batch", "DDPM vmap(sample)")
        c = {
            "B": B,
            "rounds": len(times["hand DDPM"]),
            "hand_ms": 1e3 * median(times["hand DDPM"]),
            "vs_hand": {n: paired_ratio(times[n], times["hand DDPM"]) for n in names},
            "cpu_vs_hand": {n: paired_ratio(cpu[n], cpu["hand DDPM"]) for n in names},
        }
        cheap.append(c)
        log(
            f"  [6] cheap net B={B:5d}: "
            + ", ".join(f"{n} x{v:.3f}" for n, v in c["vs_hand"].items())
        )
    ode = [ode_control(B, log=log) for B in ode_batches]
    sweep = ode_accuracy(log=log)
    return {"rows": rows, "cheap": cheap, "ode": ode, "ode_sweep": sweep}


def report(res: dict) -> str:
    rows = res["rows"]
    names = list(rows[0]["vs_hand"])
    head = ["batch", "rounds", "hand DDPM (ms)", "hand EM (ms)"] + [f"{n} / hand" for n in names]
    body = [
        [r["B"], r["rounds"], f"{r['ms']['hand DDPM']:.1f}", f"{r['ms']['hand EM']:.1f}"]
        + [f"{r['vs_hand'][n]:.3f}" for n in names]
        for r in rows
    ]
    cpu_body = [[r["B"]] + [f"{r['cpu_vs_hand'][n]:.3f}" for n in names] for r in rows]
    min_body = [[r["B"]] + [f"{r['vs_hand_min'][n]:.3f}" for n in names] for r in rows]
    ode_head = [
        "batch",
        "control",
        "time (ms)",
        "mean NFE",
        "max NFE",
        "max error",
        "99th pct error",
        "RMS error",
    ]
    ode_body = []
    for o in res["ode"]:
        for name in ("per-example", "shared"):
            d = o[name]
            ode_body.append(
                [
                    o["B"],
                    name,
                    f"{d['ms']:.1f}",
                    f"{d['nfe_mean']:.1f}",
                    f"{d['nfe_max']:.0f}",
                    f"{d['err_max']:.2e}",
                    f"{d['err_p99']:.2e}",
                    f"{d['err_rms']:.2e}",
                ]
            )
    text = [
        "## 6. Batches",
        "",
        f"The 64-D MLP eps-network of section 1, K = {rows[0]['K']} steps, float32, jitted "
        "(compile excluded), every variant taking the network as an argument. Ratios are the "
        "median over interleaved rounds of the per-round wall-time ratio to the hand-written "
        "loop of the same run: DDPM variants against a `lax.scan` that draws each step's noise "
        "for the whole batch with one `jax.random.normal`, the reverse-SDE variants against a "
        "plain Euler–Maruyama `lax.scan` (one Gaussian per step, no Brownian tree, no noise on "
        "the last step). `sample_batch` is `sd.sample_batch(key, ..., x_T)` (one key, one "
        "draw per step for the batch); `+ BatchedNet` calls the same MLP written for batches "
        "through `sd.BatchedNet`; `vmap(sample)` is `jax.vmap` of `sd.sample` with one key per "
        "example; `vmap(sample_sde)` is `jax.vmap` of `sd.sample_sde` with its defaults (fixed "
        "steps: tree-free Euler–Maruyama, drawing its own prior); `DiffraxSDE` is diffrax's "
        "Euler on a `VirtualBrownianTree` (`sample_sde(..., solver=diffrax.Euler())`, its "
        "default until 0.2). Targets: DDPM `sample_batch` <= 1.1 at batch 4096; "
        "fixed-step reverse SDE <= 1.2.",
        "",
        md_table(head, body),
        "",
        "The same, fastest run over fastest run (wall time):",
        "",
        md_table(["batch"] + [f"{n} / hand" for n in names], min_body),
        "",
        "By CPU time of the process (median of per-round ratios):",
        "",
        md_table(["batch"] + [f"{n} / hand" for n in names], cpu_body),
        "",
        "Max |sample_batch - hand loop| / max |hand loop| over the batches (same draws; float32, "
        "the coefficients computed independently): "
        + ", ".join(f"{n} {max(r['err'][n] for r in rows):.1e}" for n in rows[0]["err"])
        + ".",
        "",
        "Shared against per-example step control: the PF-ODE of the 2-D mixture oracle (VP, "
        "exact score, float64), adaptive Tsit5 with PID rtol = atol = "
        f"{res['ode'][0]['rtol']:g}, over a batch of prior draws; `sd.sample_batch` with "
        "`sd.ODE()` (one adaptive solve per example under `vmap`) and with "
        "`sd.ODE(shared_steps=True)` (one solve of the batch, one RMS error norm over it). "
        "Error: the per-example Euclidean distance to a per-example solve at 1e-10.",
        "",
        md_table(ode_head, ode_body),
        "",
        "Shared / per-example wall time: "
        + "; ".join(f"B={o['B']}: {o['shared_vs_per_example']:.3f}" for o in res["ode"])
        + ".",
        "",
    ]
    if res.get("ode_sweep"):
        sweep = res["ode_sweep"]
        text += [
            "The same without timing, over tolerances, at batch 512: on the mixture above, and on "
            "a mixture whose difficulty sits in a few examples (98 % broad, 2 % in a component "
            "of std 0.01). `mean NFE` is the work per example; under `vmap` the per-example "
            "loop runs until its slowest example (`max NFE`).",
            "",
            md_table(
                [
                    "oracle",
                    "rtol = atol",
                    "control",
                    "mean NFE",
                    "max NFE",
                    "max error",
                    "99th pct error",
                    "RMS error",
                ],
                [
                    [
                        r["oracle"],
                        f"{r['rtol']:g}",
                        "shared" if r["shared"] else "per-example",
                        f"{r['nfe_mean']:.1f}",
                        f"{r['nfe_max']:.0f}",
                        f"{r['err_max']:.2e}",
                        f"{r['err_p99']:.2e}",
                        f"{r['err_rms']:.2e}",
                    ]
                    for r in sweep
                ],
            ),
            "",
        ]
    if res.get("cheap"):
        text += [
            "A cheap network (the MLP at width 16, one hidden layer), where the Gaussian draws "
            "weigh most: DDPM, K = 50, median per-round ratio to the hand loop (wall; CPU).",
            "",
            md_table(
                ["batch", "rounds", "hand DDPM (ms)", "sample_batch / hand", "vmap(sample) / hand"],
                [
                    [
                        c["B"],
                        c["rounds"],
                        f"{c['hand_ms']:.1f}",
                        f"{c['vs_hand']['DDPM sample_batch']:.3f}; "
                        f"{c['cpu_vs_hand']['DDPM sample_batch']:.3f}",
                        f"{c['vs_hand']['DDPM vmap(sample)']:.3f}; "
                        f"{c['cpu_vs_hand']['DDPM vmap(sample)']:.3f}",
                    ]
                    for c in res["cheap"]
                ],
            ),
            "",
        ]
    return "\n".join(text)
