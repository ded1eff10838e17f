r"""DDIM inversion: deterministic DDIM steps run up the grid, from data to a latent.

The deterministic DDIM step from a point $a$ to a point $b$ of a process is
$x_b = \alpha_b\hat x_0(x_a) + \sigma_b\hat\varepsilon(x_a)$. Run from the clean end of a grid
to its noisy end, with the prediction taken at the current (less noisy) point, it maps data to
a latent that DDIM maps back (to first order in the step; exactly in the limit of fine grids,
where both are the Euler method of the probability-flow ODE in $\sigma/\alpha$). See
[inverse problems](../derivations/inverse-problems.md#inversion).
"""

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import ArrayLike, Float

from .._checks import as_float, check_int
from .._discrete.respace import check_tau
from .._discrete.schedule import DiscreteSchedule
from .._model import check_model, check_model_output
from .._process import AbstractProcess
from .._sde import AbstractLinearSDE
from .._solve._continuous import check_grid
from .._solve.base import Sample
from .replacement import coefficients


def ddim_inversion(
    process: AbstractProcess,
    model,
    grid: ArrayLike,
    x0: Float[ArrayLike, "*shape"],
    *,
    cond: tuple = (),
    fixed_point: int = 0,
    save_trajectory: bool = False,
) -> Sample:
    r"""Map data to a latent with deterministic DDIM steps run up `grid` (DDIM inversion).

    From $x_0$ at the clean end of the grid, each step from a point $a$ to the next noisier
    point $b$ is

    $$x_b = \frac{\alpha_b}{\alpha_a}x_a + \Big(\sigma_b - \frac{\alpha_b}{\alpha_a}\sigma_a\Big)
      \hat\varepsilon(x_a) = \alpha_b\hat x_0(x_a) + \sigma_b\hat\varepsilon(x_a),$$

    with $\hat\varepsilon$ = `model.eps(process, a, x_a, *cond)`. The latent is decoded by
    deterministic DDIM on the same grid: [`sample`][scoredyn.sample] with no key and
    [`DDIM`][scoredyn.DDIM] on a [`DiscreteSchedule`][scoredyn.DiscreteSchedule], or with
    `DPMSolverPP(order=1)` (the same step) on a continuous process. The decode evaluates
    $\hat\varepsilon$ at the noisier end of each step and this inversion at the cleaner one,
    so the round trip is exact only in the limit of fine grids (error $O(1/K)$).

    With `fixed_point` $= n \ge 1$, each step is instead solved for the decode's own
    $\hat\varepsilon$ at the noisier end, by $n$ fixed-point iterations started from the
    step above,
    $x_b \leftarrow \frac{\alpha_b}{\alpha_a}x_a + \big(\sigma_b - \frac{\alpha_b}{\alpha_a}
    \sigma_a\big)\hat\varepsilon(x_b, b)$: a fixed point is exactly undone by the DDIM step
    from $b$ to $a$, so the round trip error is the iterations' residual (they contract when
    $|\sigma_b - \alpha_b\sigma_a/\alpha_a|$ times the Lipschitz constant of
    $\hat\varepsilon$ is below 1, i.e. for fine enough grids). Cost: $(1 + n)K$ evaluations.
    The probability-flow ODE ([`encode`][scoredyn.encode] / [`decode`][scoredyn.decode]) is
    the other exact map. Editing: invert with one condition and decode with another
    ([example](../derivations/inverse-problems.md#inversion)).

    A discrete trajectory starts at index 0 ($\sigma = 0$), where the first step uses the
    model's $\hat\varepsilon$ at $\sigma = 0$ (for the exact model of a smooth density it is 0).

    Args:
        process: a [`DiscreteSchedule`][scoredyn.DiscreteSchedule] (grid: increasing indices
            `tau`, as for sampling) or a linear SDE / interpolant (grid: decreasing times, as
            for sampling).
        model: an [`AbstractModel`][scoredyn.AbstractModel].
        grid: the sampling grid; the inversion runs it backwards.
        x0: ONE example (any shape); `jax.vmap` for a batch.
        cond: extra model arguments (`net(t, x, *cond)`).
        fixed_point: $n \ge 0$, fixed-point iterations per step (static; 0: plain inversion).
        save_trajectory: also return the state at every grid point, indexed like the grid.

    Returns:
        A [`Sample`][scoredyn.Sample]: `x` is the latent at the noisy end of the grid.

    Raises:
        TypeError: for a `process` that is neither a `DiscreteSchedule` nor a linear SDE, a
            bare callable as `model`, or a model whose output is not shaped like `x0`.
        ValueError: for a grid that is not a valid sampling grid of `process`, or a negative
            `fixed_point`.

    Example:
        ```python
        tau = sd.grids.even(1000, 100)
        z = sd.ddim_inversion(sched, model, tau, x0).x
        x0_again = sd.sample(None, sched, model, sd.DDIM(), tau, z).x
        ```

    References:
        Song, Meng & Ermon, *Denoising Diffusion Implicit Models*, arXiv:2010.02502 (Sec. 4.3).
        Dhariwal & Nichol, *Diffusion Models Beat GANs on Image Synthesis*, arXiv:2105.05233.
        Pan et al., *Effective Real Image Editing with Accelerated Iterative Diffusion
        Inversion*, arXiv:2309.04907 (fixed-point inversion).
    """
    model = check_model(model)
    x0 = as_float(x0, "x0")
    fixed_point = check_int(fixed_point, "fixed_point", minimum=0)
    if not isinstance(cond, tuple):
        raise TypeError(f"`cond` must be a tuple of extra model arguments, got {cond!r}.")
    if isinstance(process, DiscreteSchedule):
        coords = check_tau(grid, process.num_steps, "grid")  # increasing: clean to noisy
    elif isinstance(process, AbstractLinearSDE):
        g, x0 = check_grid(grid, process, x0.dtype, x=x0)
        coords = jnp.flip(g)  # sampling grids decrease; the inversion runs them upwards
    else:
        raise TypeError(
            "`process` must be an sd.DiscreteSchedule or a linear SDE / interpolant (sd.VPSDE(), "
            f"sd.RectifiedFlow(), ...), got {type(process).__name__}."
        )
    check_model_output(model, process, coords[0], jnp.asarray(x0), cond)
    z, traj = _invert(process, model, coords, x0, cond, fixed_point, save_trajectory)
    if traj is not None and not isinstance(process, DiscreteSchedule):
        traj = jnp.flip(traj, axis=0)  # indexed like the (decreasing) grid
    K = coords.shape[0] - 1
    return Sample(z, traj, {"nfe": (1 + fixed_point) * K, "num_steps": K})


@eqx.filter_jit
def _invert(process, model, coords, x0, cond, fixed_point, save_trajectory):
    def body(x, pair):
        a, b = pair
        alpha_a, sigma_a = coefficients(process, a, x.dtype)
        alpha_b, sigma_b = coefficients(process, b, x.dtype)
        ratio = alpha_b / alpha_a
        c = sigma_b - ratio * sigma_a
        base = ratio * x
        x_b = base + c * model.eps(process, a, x, *cond)
        x_b = lax.fori_loop(
            0, fixed_point, lambda _, u: base + c * model.eps(process, b, u, *cond), x_b
        )
        return x_b, (x_b if save_trajectory else None)

    z, xs = lax.scan(body, x0, (coords[:-1], coords[1:]))
    if not save_trajectory:
        return z, None
    assert xs is not None
    return z, jnp.concatenate([x0[None], xs], axis=0)
