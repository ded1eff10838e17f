r"""Read a diffusers scheduler config (`scheduler_config.json`) as scoredyn values.

diffusers numbers its $N$ training timesteps $k = 0, \dots, N - 1$, with
$\bar a$ = `alphas_cumprod[k]` at timestep $k$; scoredyn's
[`DiscreteSchedule`][scoredyn.DiscreteSchedule] has one more index, $n = 0$ for clean data, so

$$n = k + 1,\qquad \bar a_n = \texttt{alphas\_cumprod}[n - 1],\qquad
  \texttt{tau} = [0] + \mathrm{sorted}(k + 1 \text{ for } k \text{ in timesteps}).$$

A network is called at the time $t_n = n/N$, so diffusers' timestep is
$k = \mathrm{round}(tN) - 1$ ([`DiffusersConfig.timestep`][scoredyn.DiffusersConfig.timestep]).
See [Coming from diffusers](../migration.md).
"""

import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._checks import check_float_dtype, check_int
from .._model import AbstractModel, ClipX0, EpsModel, VModel, X0Model
from .schedule import DiscreteSchedule

_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler")
_DPM = "DPMSolverMultistepScheduler"

# diffusers 0.32's constructor defaults of the keys read here (the value a missing key takes)
_COMMON_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "DDIMScheduler": {
        **_COMMON_DEFAULTS,
        "timestep_spacing": "leading",
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
    },
    "DDPMScheduler": {
        **_COMMON_DEFAULTS,
        "timestep_spacing": "leading",
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "variance_type": "fixed_small",
    },
    _DPM: {
        **_COMMON_DEFAULTS,
        "timestep_spacing": "linspace",
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf,
        "variance_type": None,
    },
}
# keys read by one scheduler and not a parameter of another: diffusers' `from_config` ignores
# them there, and so does the loader
_OTHER_SCHEDULERS_KEYS = {
    "clip_sample",
    "clip_sample_range",
    "set_alpha_to_one",
    "variance_type",
    "final_sigmas_type",
    "lambda_min_clipped",
}
# keys that choose the sampling algorithm: not translated, returned in `solver_options`
_SOLVER_KEYS = {
    "solver_order",
    "algorithm_type",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
    "predict_x0",
    "disable_corrector",
    "solver_p",
    "skip_prk_steps",
    "interpolation_type",
}
# keys of other schedulers that change the noise levels or the timesteps: accepted only at the
# value that changes nothing
_NEUTRAL: dict[str, tuple] = {
    "use_karras_sigmas": (False, None),
    "use_exponential_sigmas": (False, None),
    "use_beta_sigmas": (False, None),
    "use_lu_lambdas": (False, None),
    "use_flow_sigmas": (False, None),
    "use_dynamic_shifting": (False, None),
    "flow_shift": (1.0, None),
    "shift": (1.0, None),
    "timestep_type": ("discrete", None),
    "sigma_min": (None,),
    "sigma_max": (None,),
}
_MODELS = {"epsilon": EpsModel, "v_prediction": VModel, "sample": X0Model}


class DiffusersConfig(eqx.Module):
    r"""A diffusers scheduler config read as scoredyn values
    ([`from_diffusers_config`][scoredyn.from_diffusers_config]).

    Sample with `sd.sample(key, cfg.process, cfg.model(net), sd.DDIM(), cfg.grid, x_T)`.

    Attributes:
        schedule: the training schedule, $N$ = `num_train_timesteps`, with
            `schedule.alpha_bar[k + 1] == alphas_cumprod[k]`.
        grid: the trajectory, int32 `(K + 1,)`: `[0] + sorted(timesteps + 1)`.
        timesteps: diffusers' `scheduler.timesteps` after `set_timesteps(K)`, in sampling
            order (int32 `(K,)`), so `grid[1:][::-1] == timesteps + 1`.
        prediction_type: `"epsilon"`, `"v_prediction"` or `"sample"`.
        clip: `(lo, hi)` when diffusers clips $\hat x_0$ (`clip_sample`, or `thresholding`
            with `sample_max_value = 1`), else `None`.
        final_index: the index diffusers' last step lands on: 0 (clean data), or 1 when
            DDIM has `set_alpha_to_one=False` or DPM-Solver `final_sigmas_type="sigma_min"`
            (then its output is $x$ at `alphas_cumprod[0]`). scoredyn's discrete samplers
            always end at index 0.
        large_variance: DDPM's `variance_type="fixed_large"`: use
            `sd.DDPM(large_variance=True)`.
        num_train_timesteps: $N$.
        solver_options: the config's sampler settings (`solver_order`, `algorithm_type`, ...)
            as `(key, value)` pairs, not translated: choose the scoredyn solver yourself.
    """

    schedule: DiscreteSchedule
    grid: Int[Array, " num_points"]
    timesteps: Int[Array, " num_steps"]
    prediction_type: str = eqx.field(static=True)
    clip: tuple[float, float] | None = eqx.field(static=True)
    final_index: int = eqx.field(static=True)
    large_variance: bool = eqx.field(static=True)
    num_train_timesteps: int = eqx.field(static=True)
    solver_options: tuple[tuple[str, Any], ...] = eqx.field(static=True)

    @property
    def process(self) -> DiscreteSchedule:
        r"""What to sample: `schedule`, or, when the grid ends below $N$ (leading spacing:
        diffusers starts from pure noise at its largest timestep), `schedule` cut at
        `grid[-1]`, with `T = grid[-1] / N` so that networks are still called at
        $t_n = n/N$. Read it outside `jax.jit`, or close over the config (its arrays must be
        concrete: the cut sets a shape)."""
        end = int(np.asarray(self.grid)[-1])
        if end == self.schedule.num_steps:
            return self.schedule
        log_ab = np.asarray(self.schedule.log_alpha_bar)[: end + 1]
        return DiscreteSchedule(log_alpha_bar=log_ab, T=end / self.num_train_timesteps)

    def model(self, net) -> AbstractModel:
        r"""Wrap `net(t, x, *cond)` (scoredyn's argument order, ONE example) as the model the
        config describes: `sd.EpsModel`, `sd.VModel` or `sd.X0Model` by `prediction_type`,
        inside `sd.ClipX0(model, lo, hi)` when `clip` is set.

        A diffusers network takes `(x, timestep)`; pass
        `lambda t, x: unet(x, cfg.timestep(t))`.

        `sd.ClipX0` recomputes $\hat\varepsilon$ from the clipped $\hat x_0$. That is diffusers'
        DDPM step, and its DDIM step with `use_clipped_model_output=True`; diffusers' DDIM
        default keeps the unclipped $\hat\varepsilon$ in the direction term, which differs
        whenever clipping acts.
        """
        model = _MODELS[self.prediction_type](net)
        if self.clip is not None:
            model = ClipX0(model, *self.clip)
        return model

    def timestep(self, t: Float[ArrayLike, "..."]) -> Int[Array, "..."]:
        r"""diffusers' timestep $k = \mathrm{round}(tN) - 1$ (int32) at the network time
        $t = t_n = n/N$ that scoredyn passes to a network at index $n$."""
        t = jnp.asarray(t)
        return jnp.round(t * self.num_train_timesteps).astype(jnp.int32) - 1


def _betas(c: dict, N: int) -> np.ndarray | None:
    """The training betas in float64 (None: the cosine schedule, built by DiscreteSchedule)."""
    if c["trained_betas"] is not None:
        betas = np.asarray(c["trained_betas"], np.float64)
        if betas.ndim != 1 or betas.shape[0] != N:
            raise ValueError(
                f"`trained_betas` must have num_train_timesteps = {N} entries, got shape "
                f"{betas.shape}."
            )
        return betas
    kind = c["beta_schedule"]
    b0, b1 = float(c["beta_start"]), float(c["beta_end"])
    if kind == "linear":
        return np.linspace(b0, b1, N)
    if kind == "scaled_linear":
        return np.linspace(math.sqrt(b0), math.sqrt(b1), N) ** 2
    if kind == "squaredcos_cap_v2":
        return None
    raise ValueError(
        f"`beta_schedule` must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', got {kind!r} "
        "(or give `trained_betas`)."
    )


def _timesteps(rule: str, c: dict, N: int, K: int, last: int) -> np.ndarray:
    """diffusers' timestep list (sampling order) for spacing `c["timestep_spacing"]`.

    `rule` is "ddim" (DDIM and DDPM: K points) or "dpm" (DPM-Solver: K + 1 points, the last
    dropped, up to `last`, which `lambda_min_clipped` may lower below N)."""
    spacing, offset = c["timestep_spacing"], c["steps_offset"]
    if rule == "ddim":
        if spacing == "linspace":
            return np.round(np.linspace(0, N - 1, K))[::-1].astype(np.int64)
        if spacing == "leading":
            return (np.arange(K) * (N // K))[::-1].astype(np.int64) + offset
        if spacing == "trailing":
            return np.round(np.arange(N, 0, -N / K)).astype(np.int64) - 1
    else:
        if spacing == "linspace":
            return np.round(np.linspace(0, last - 1, K + 1))[::-1][:-1].astype(np.int64)
        if spacing == "leading":
            return (np.arange(K + 1) * (last // (K + 1)))[::-1][:-1].astype(np.int64) + offset
        if spacing == "trailing":
            return np.round(np.arange(last, 0, -N / K)).astype(np.int64) - 1
    raise ValueError(
        f"`timestep_spacing` must be 'leading', 'trailing' or 'linspace', got {spacing!r}."
    )


def _check_keys(config: dict, scheduler: str) -> tuple[dict, tuple[tuple[str, Any], ...]]:
    """The config with defaults filled in, and the sampler settings it carries."""
    defaults = _DEFAULTS[scheduler]
    options = []
    for key, value in config.items():
        if not isinstance(key, str):
            raise TypeError(f"`config` keys must be strings, got {key!r}.")
        if key.startswith("_") or key in defaults:
            continue
        if key in _OTHER_SCHEDULERS_KEYS:
            continue  # not a parameter of `scheduler`: diffusers ignores it too
        if key in _SOLVER_KEYS:
            options.append((key, tuple(value) if isinstance(value, list) else value))
            continue
        if key in _NEUTRAL:
            if value not in _NEUTRAL[key]:
                raise ValueError(
                    f"config key `{key}` = {value!r} changes the noise levels or timesteps in a "
                    f"way from_diffusers_config does not reproduce (accepted: "
                    f"{' or '.join(map(repr, _NEUTRAL[key]))}); build the grid with sd.grids "
                    "(e.g. sd.grids.karras) on a continuous process instead."
                )
            continue
        raise ValueError(
            f"config key `{key}` = {value!r} is not one that from_diffusers_config knows, so it "
            f"cannot tell whether it changes the maths of {scheduler}; remove it from the dict "
            "if it does not."
        )
    return {**defaults, **{k: v for k, v in config.items() if k in defaults}}, tuple(options)


def _check_choice(c: dict, key: str, allowed: tuple) -> None:
    if c[key] not in allowed:
        raise ValueError(
            f"config key `{key}` must be one of {', '.join(map(repr, allowed))}, got {c[key]!r}."
        )


def _check_bool(c: dict, key: str) -> bool:
    if not isinstance(c[key], bool | np.bool_):
        raise TypeError(f"config key `{key}` must be a bool, got {c[key]!r}.")
    return bool(c[key])


def _clip(c: dict, scheduler: str) -> tuple[float, float] | None:
    if _check_bool(c, "thresholding"):
        smv = float(c["sample_max_value"])
        if smv != 1.0:
            raise ValueError(
                f"config key `sample_max_value` = {smv} with `thresholding=True` caps diffusers' "
                "dynamic threshold, which sd.DynamicThreshold does not; only sample_max_value "
                "= 1 (where the threshold is plain clipping to [-1, 1]) is translated."
            )
        return (-1.0, 1.0)
    if scheduler != _DPM and _check_bool(c, "clip_sample"):
        r = float(c["clip_sample_range"])
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"config key `clip_sample_range` must be > 0, got {r}.")
        return (-r, r)
    return None


def from_diffusers_config(
    config: dict[str, Any],
    num_inference_steps: int,
    *,
    scheduler: str | None = None,
    dtype=None,
) -> DiffusersConfig:
    r"""Read a diffusers scheduler config dict as a schedule, a grid and a model hint.

    `config` is the dict of a `scheduler_config.json` (no diffusers import is needed). The
    schedule is built in float64 from the same rules as diffusers (whose own betas are
    float32): `"linear"` ($\beta_k$ evenly from `beta_start` to `beta_end`),
    `"scaled_linear"` ($\sqrt{\beta_k}$ evenly), `"squaredcos_cap_v2"`
    ([`DiscreteSchedule.cosine`][scoredyn.DiscreteSchedule.cosine], $s = 0.008$, cap 0.999) or
    `trained_betas`. The grid follows `scheduler`'s timestep rule for
    `num_inference_steps` $= K$:

    | spacing | DDIM, DDPM timesteps | DPM-Solver (multistep) timesteps |
    |---|---|---|
    | `leading` | $jr + o$, $0 \le j < K$ | $jr' + o$, $1 \le j \le K$ |
    | `trailing` | `round(arange(N, 0, -N/K)) - 1` | `round(arange(L, 0, -N/K)) - 1` |
    | `linspace` | `round(linspace(0, N-1, K))` | `round(linspace(0, L-1, K+1))` minus the 0 |

    with $r = \lfloor N/K\rfloor$, $r' = \lfloor L/(K+1)\rfloor$, $o$ = `steps_offset`
    (leading only; diffusers ignores it otherwise) and $L = N$
    minus the timesteps whose $\tfrac12\lambda$ lies below `lambda_min_clipped`. Then
    `grid = [0] + sorted(timesteps + 1)`.

    Keys are read as diffusers 0.32 reads them, defaults included (for DDIM and DDPM
    `clip_sample=True` and `timestep_spacing="leading"`; for DPM-Solver `"linspace"`). Keys
    starting with `_`, and keys of the other two schedulers that the chosen one lacks (e.g.
    `set_alpha_to_one` for DPM-Solver), are ignored, as diffusers' `from_config` ignores them;
    sampler settings (`solver_order`, `algorithm_type`, `skip_prk_steps`, ...) are returned in
    `solver_options`; settings of other schedulers that move the noise levels
    (`use_karras_sigmas`, `shift`, ...) are accepted only at their neutral value; any other
    key raises, naming it.

    **What differs from diffusers' own samplers** (see the [migration page](../migration.md)):
    diffusers' `DDIMScheduler.step` steps from timestep $k$ to $k - \lfloor N/K\rfloor$, which
    is not the next timestep of the list for `linspace`, or for `trailing` when $K$ does not
    divide $N$; scoredyn's DDIM steps along `grid`. Its DDIM default uses the unclipped
    $\hat\varepsilon$ after clipping (see [`model`][scoredyn.DiffusersConfig.model]). And
    `final_index = 1` marks a last step that lands on `alphas_cumprod[0]` instead of clean data.

    Args:
        config: the scheduler config dict.
        num_inference_steps: $K \ge 1$ (diffusers' `set_timesteps(K)`).
        scheduler: whose timestep rule to follow: `"DDIMScheduler"`, `"DDPMScheduler"` or
            `"DPMSolverMultistepScheduler"`; default `config["_class_name"]`. Another class
            (e.g. Stable Diffusion's `"PNDMScheduler"`) needs this argument:
            `scheduler="DDIMScheduler"` reads the config as `DDIMScheduler.from_config` does.
        dtype: float dtype of the schedule (default: float64 under x64, else float32).

    Returns:
        A [`DiffusersConfig`][scoredyn.DiffusersConfig].

    Raises:
        ValueError: for an unknown key, a value that is not translated (`beta_schedule`
            `"sigmoid"`, `rescale_betas_zero_snr=True`, whose $\bar a_N = 0$ a
            `DiscreteSchedule` cannot hold, learned variances, `use_karras_sigmas=True`, a
            capped dynamic threshold, ...), $K > N$, or timesteps that are not $K$ distinct
            values in $0..N-1$ (e.g. `trailing` for $N = 1000$, $K = 61$).
        TypeError: for a `config` that is not a dict, or a non-int `num_inference_steps`.

    Example:
        ```python
        config = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}
        cfg = sd.from_diffusers_config(config, 50)
        cfg.timesteps[:3], cfg.grid[-3:]   # [981, 961, 941], [942, 962, 982]
        ```
    """
    if not isinstance(config, dict):
        raise TypeError(f"`config` must be a dict (scheduler_config.json), got {config!r}.")
    if scheduler is None:
        scheduler = config.get("_class_name")
        if scheduler not in _SCHEDULERS:
            raise ValueError(
                f"config `_class_name` = {scheduler!r} has no timestep rule here; pass "
                f"`scheduler=` one of {', '.join(map(repr, _SCHEDULERS))} (as "
                "DDIMScheduler.from_config(config) would read it)."
            )
    elif scheduler not in _SCHEDULERS:
        raise ValueError(
            f"`scheduler` must be one of {', '.join(map(repr, _SCHEDULERS))}, got {scheduler!r}."
        )
    c, options = _check_keys(config, scheduler)
    N = check_int(c["num_train_timesteps"], "num_train_timesteps")
    K = check_int(num_inference_steps, "num_inference_steps")
    if K > N:
        raise ValueError(f"`num_inference_steps` must be <= num_train_timesteps = {N}, got {K}.")
    dtype = check_float_dtype(dtype)
    if _check_bool(c, "rescale_betas_zero_snr"):
        raise ValueError(
            "config key `rescale_betas_zero_snr` = True gives alphas_cumprod[-1] = 0 (zero "
            "terminal SNR), which a DiscreteSchedule (0 < alpha_bar) cannot hold."
        )
    _check_choice(c, "prediction_type", tuple(_MODELS))
    offset = check_int(c["steps_offset"], "steps_offset", minimum=0)

    betas = _betas(c, N)
    if betas is None:
        schedule = DiscreteSchedule.cosine(N, s=0.008, max_beta=0.999, dtype=dtype)
    else:
        schedule = DiscreteSchedule.from_betas(jnp.asarray(betas, dtype))

    large_variance = False
    final_index = 0
    if scheduler == _DPM:
        _check_choice(c, "final_sigmas_type", ("zero", "sigma_min"))
        final_index = 0 if c["final_sigmas_type"] == "zero" else 1
        if c["variance_type"] is not None:
            raise ValueError(
                f"config key `variance_type` = {c['variance_type']!r}: the network predicts "
                "its variance too; pass its noise half alone (the first half of the channels) "
                "and drop the key."
            )
        lmc = c["lambda_min_clipped"]
        lmc = -math.inf if lmc is None else float(lmc)
        half_lambda = 0.5 * np.asarray(schedule.log_snr()[1:], np.float64)
        last = N - int(np.sum(half_lambda < lmc))
        rule = "dpm"
    else:
        last = N
        rule = "ddim"
        if scheduler == "DDPMScheduler":
            _check_choice(c, "variance_type", ("fixed_small", "fixed_small_log", "fixed_large"))
            large_variance = c["variance_type"] == "fixed_large"
    ts = _timesteps(rule, {**c, "steps_offset": offset}, N, K, last)
    if (
        ts.shape[0] != K
        or ts.min() < 0
        or ts.max() > N - 1
        or (ts.shape[0] > 1 and not bool(np.all(np.diff(ts) < 0)))
    ):
        raise ValueError(
            f"{scheduler}'s `timestep_spacing` = {c['timestep_spacing']!r} rule gives the "
            f"timesteps {ts.tolist()} for num_train_timesteps = {N}, num_inference_steps = {K}"
            f"{f', steps_offset = {offset}' if offset else ''}: not {K} distinct timesteps in "
            f"0..{N - 1}; choose another num_inference_steps."
        )
    if scheduler == "DDIMScheduler":
        prev = int(ts[-1]) - N // K  # where diffusers' DDIM step from the last timestep lands
        set_one = _check_bool(c, "set_alpha_to_one")
        final_index = prev + 1 if prev >= 0 else (0 if set_one else 1)
    clip = _clip(c, scheduler)

    grid = np.concatenate([[0], np.sort(ts + 1)]).astype(np.int32)
    return DiffusersConfig(
        schedule=schedule,
        grid=jnp.asarray(grid),
        timesteps=jnp.asarray(ts.astype(np.int32)),
        prediction_type=c["prediction_type"],
        clip=clip,
        final_index=final_index,
        large_variance=large_variance,
        num_train_timesteps=N,
        solver_options=options,
    )
