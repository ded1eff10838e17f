"""Predictor–corrector sampling: Euler–Maruyama predictor, Langevin corrector (the 0.1 verb,
now a wrapper of [`PredictorCorrector`][scoredyn.PredictorCorrector])."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Key, ScoreFn
from .._misc import is_concrete
from .._model import ScoreModel
from .._sde import AbstractLinearSDE
from ._utils import check_dtype, check_num_steps, check_score, check_sde, check_shape, check_t_eps
from .predictor_corrector import (
    PredictorCorrector,
    langevin_step_size as langevin_step_size,  # re-exported: its home before 0.2
)
from .verbs import sample


def sample_pc(
    key: Key,
    sde: AbstractLinearSDE,
    score: ScoreFn,
    shape: tuple[int, ...],
    *,
    num_steps: int = 1000,
    snr: float = 0.16,
    num_corrector_steps: int = 1,
    t_eps: float | None = None,
    axis_name=None,
    dtype=None,
):
    r"""Predictor–corrector sampling: Langevin corrector, Euler–Maruyama predictor (Song et al.).

    Deprecated alias (removed in 0.3): use
    `sd.sample(k_loop, sde, sd.ScoreModel(score), sd.PredictorCorrector(snr, num_corrector_steps,
    axis_name), jnp.linspace(T, t_eps, num_steps + 1), x_T)` with
    `k_prior, k_loop = jax.random.split(key)` and `x_T = sde.prior_sample(k_prior, shape)`;
    this function is exactly that (same bits).

    On the uniform grid $T = t_0 > t_1 > \dots > t_N = t_\epsilon$ each iteration $i$ first runs
    `num_corrector_steps` Langevin steps that target $p_{t_i}$,

    $$x \leftarrow x + \epsilon_i\,s(t_i, x) + \sqrt{2\epsilon_i}\,z,\qquad
      \epsilon_i = 2 a_i\Big(r\,\frac{\lVert z\rVert}{\lVert s(t_i, x)\rVert}\Big)^2,\qquad
      a_i = \frac{\alpha(t_i)^2}{\alpha(t_{i+1})^2},$$

    with $r$ = `snr` and fresh $z \sim \mathcal N(0, I)$ (for VP, $a_i \approx 1 - \beta(t_i)h$ is
    the DDPM $\alpha_i$ of the paper; for VE, $a_i = 1$). Then one Euler–Maruyama step of the
    reverse SDE goes from $t_i$ to $t_{i+1}$, $h = t_i - t_{i+1}$:

    $$x \leftarrow x - h\,[f(t_i)x - g(t_i)^2 s(t_i, x)] + g(t_i)\sqrt h\,z'.$$

    The loop is a `lax.scan` (compile time does not grow with `num_steps`); it costs
    `num_steps * (1 + num_corrector_steps)` score evaluations. See
    [predictor–corrector](../derivations/reverse-sde.md#predictor-corrector-sampling).

    Args:
        key: PRNG key.
        sde: a linear SDE.
        score: $(t, x) \mapsto \nabla_x\log p_t(x)$.
        shape: shape of ONE example.
        num_steps: number $N \ge 1$ of predictor steps.
        snr: the signal-to-noise ratio $r > 0$ of the corrector.
        num_corrector_steps: Langevin steps per predictor step ($\ge 0$; 0 gives plain
            Euler–Maruyama).
        t_eps: end time $0 < t_\epsilon < T$.
        axis_name: name of a `jax.vmap` axis over which to average $\lVert z\rVert$ and
            $\lVert s\rVert$ before forming $\epsilon_i$, as Song et al.'s code does over a batch.
            Recommended in low dimension: per example, $\lVert z\rVert^2/\lVert s\rVert^2$ is
            heavy-tailed when $d$ is small (for $d = 2$ the inverse of a $\chi^2_2$ variable has
            infinite mean), and occasional huge Langevin steps bias the samples.
        dtype: floating dtype (default float).

    Returns:
        A sample of shape `shape`.

    Example:
        ```python
        pc = lambda k: sd.sample_pc(k, sde, score, (2,), num_steps=100, axis_name="batch")
        xs = jax.vmap(pc, axis_name="batch")(jax.random.split(key, 2000))
        ```

    Raises:
        TypeError: for a bad `shape`, a non-linear `sde` or a wrong-shaped `score`.
        ValueError: for `num_steps < 1`, `num_corrector_steps < 0`, `snr <= 0` or a bad `t_eps`.

    References:
        Song et al., *Score-Based Generative Modeling through SDEs*, arXiv:2011.13456, Alg. 4–5.
    """
    check_sde(sde, linear=True)
    shape = check_shape(shape)
    dtype = check_dtype(dtype)
    num_steps = check_num_steps(num_steps)
    if (
        not isinstance(num_corrector_steps, int)
        or isinstance(num_corrector_steps, bool)
        or num_corrector_steps < 0
    ):
        raise ValueError(
            f"`num_corrector_steps` must be a Python int >= 0, got {num_corrector_steps!r}."
        )
    if is_concrete(snr) and not float(snr) > 0:
        raise ValueError(f"`snr` must be > 0, got {snr}.")
    t_eps = check_t_eps(t_eps, sde)
    check_score(score, "score", sde.T, jnp.zeros(shape, dtype))
    solver = PredictorCorrector(snr, num_corrector_steps, axis_name)
    return _pc_kernel(key, sde, score, shape, dtype, t_eps, num_steps, solver)


@eqx.filter_jit
def _pc_kernel(key, sde, score, shape, dtype, t_eps, num_steps, solver):
    """The prior draw and `sd.sample(k_loop, sde, sd.ScoreModel(score), solver, grid, x_T)`,
    compiled whole: an eager call and a call under the user's `jax.jit` run the same program,
    so the same key gives bit-identical samples."""
    k_prior, k_loop = jax.random.split(key)
    x_T = sde.prior_sample(k_prior, shape, dtype)
    grid = jnp.linspace(jnp.asarray(sde.T, dtype), jnp.asarray(t_eps, dtype), num_steps + 1)
    return sample(k_loop, sde, ScoreModel(score), solver, grid, x_T).x
