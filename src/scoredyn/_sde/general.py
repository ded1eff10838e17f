"""A general (possibly non-linear) SDE from user callables."""

from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, Float

from .._custom_types import Time
from .._misc import check_positive
from .base import AbstractSDE


class SDE(AbstractSDE):
    r"""A general Itô SDE $\mathrm{d}x = f(t, x)\,\mathrm{d}t + g(t, x)\,\mathrm{d}W$ from
    callables.

    Use it for non-linear drifts (e.g. a Langevin or Ornstein–Uhlenbeck process with a learned
    potential). The reverse-time SDE and the probability-flow ODE work for it too, with the
    divergence correction when `state_dependent_diffusion=True`.

    Args:
        drift_fn: $(t, x) \mapsto f(t, x)$, shaped like `x`.
        diffusion_fn: $(t, x) \mapsto g(t, x)$, a scalar or an array broadcastable to `x`.
        T: final time.
        state_dependent_diffusion: whether $g$ depends on $x$.

    Example:
        ```python
        ou = sd.SDE(lambda t, x: -x, lambda t, x: jnp.sqrt(2.0), T=5.0)
        ```
    """

    drift_fn: Callable
    diffusion_fn: Callable
    T: float = 1.0
    x_dependent: bool = eqx.field(default=False, static=True)

    def __init__(
        self,
        drift_fn: Callable,
        diffusion_fn: Callable,
        T: float = 1.0,
        *,
        state_dependent_diffusion: bool = False,
    ):
        if not callable(drift_fn):
            raise TypeError(f"`drift_fn` must be callable (t, x) -> array, got {drift_fn!r}.")
        if not callable(diffusion_fn):
            raise TypeError(
                f"`diffusion_fn` must be callable (t, x) -> array, got {diffusion_fn!r}."
            )
        check_positive(T, "T")
        self.drift_fn = drift_fn
        self.diffusion_fn = diffusion_fn
        self.T = T
        self.x_dependent = bool(state_dependent_diffusion)

    @property
    def state_dependent_diffusion(self) -> bool:
        return self.x_dependent

    def drift(self, t: Time, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return self.drift_fn(t, x)

    def diffusion(self, t: Time, x: Float[Array, "*shape"]) -> Float[Array, "..."]:
        return self.diffusion_fn(t, x)
