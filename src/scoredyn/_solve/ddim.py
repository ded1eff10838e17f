r"""DDIM (Song et al. 2021) and its $\eta$ family on any trajectory.

$\lambda^2 = v = \eta^2\tilde\beta_{m|n}$: $\eta = 0$ is the deterministic DDIM, the Euler
method of the probability-flow ODE in the variable $\sigma/\alpha$; $\eta = 1$ is DDPM.
See [the DDIM family](../derivations/ddim.md#the-ddim-family).
"""

import jax.numpy as jnp

from .._discrete.posterior import check_eta, pair_terms
from .._discrete.respace import check_tau
from .._discrete.schedule import DiscreteSchedule
from .discrete import AbstractDiscreteSolver, Chain, known_zero, make_chain


class DDIM(AbstractDiscreteSolver):
    r"""DDIM($\eta$): $x_m = \alpha_m\hat x_0 + \sqrt{1 - \bar a_m - \lambda^2}\,\hat\varepsilon
    + \lambda z$ with $\lambda^2 = \eta^2\tilde\beta_{m|n}$.

    Args:
        eta: $\eta \in [0, 1]$ (0: deterministic; may be traced).
        final_noise: add noise on the last step too.

    Example:
        ```python
        res = sd.sample(None, sched, sd.EpsModel(net), sd.DDIM(), sd.grids.even(1000, 50), x_T)
        ```

    References:
        Song, Meng & Ermon, *Denoising Diffusion Implicit Models*, arXiv:2010.02502.
    """

    eta: float = 0.0
    final_noise: bool = False

    def __check_init__(self):
        check_eta(self.eta)
        if not isinstance(self.final_noise, bool):
            raise TypeError(f"`final_noise` must be a bool, got {self.final_noise!r}.")

    def is_stochastic(self, process, grid) -> bool:
        if known_zero(self.eta) and not self.final_noise:
            return False
        return super().is_stochastic(process, grid)

    def chain(self, sched: DiscreteSchedule, tau) -> Chain:
        tau = check_tau(tau, sched.num_steps)
        t = pair_terms(sched, tau[1:], tau[:-1])
        # check_eta's return value carries the run-time check of a traced eta
        eta = check_eta(self.eta)
        lam2 = jnp.asarray(eta, t.beta_tilde.dtype) ** 2 * t.beta_tilde
        return make_chain(sched, tau, lam2, lam2, final_noise=self.final_noise, terms=t)
