r"""Analytic-DPM, Analytic-DDIM, SN-DPM and NPR-DPM as discrete solvers.

Each is the DDIM family's chain with an optimal reverse variance: Analytic-DPM / -DDIM from the
score moment $\Gamma$ ([`estimate_gamma`][scoredyn.analytic.estimate_gamma]), SN-/NPR-DPM from
a second network head that predicts $\mathbb E[\varepsilon^2\mid x_n]$ or
$\mathbb E[(\varepsilon - \hat\varepsilon)^2\mid x_n]$. The forward process is DDIM($\eta$):
$\eta = 1$ is DDPM's $\tilde\beta$, $\eta = 0$ the deterministic DDIM mean.
See [optimal reverse variance](../derivations/analytic-dpm.md) and
[imperfect mean](../derivations/extended-analytic-dpm.md).
"""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp

from .._discrete.posterior import check_eta, pair_terms
from .._discrete.respace import check_tau
from .._discrete.schedule import DiscreteSchedule
from .._solve.discrete import AbstractDiscreteSolver, Chain, make_chain
from ._common import check_data_range
from ._extended import npr_variance_fn, sn_variance_fn
from ._gamma import GammaEstimate
from ._variance import optimal_variances


def _forward(eta) -> tuple[str, float]:
    """The (forward, eta) pair of the 0.1 functions: eta = 1 is DDPM's forward process."""
    return ("ddpm", 0.0) if isinstance(eta, (int, float)) and eta == 1 else ("ddim", eta)


def _lam2(sched, tau, eta):
    t = pair_terms(sched, tau[1:], tau[:-1])
    eta = check_eta(eta)  # the returned value carries the run-time check of a traced eta
    return t, jnp.asarray(eta, t.beta_tilde.dtype) ** 2 * t.beta_tilde


class AnalyticDPM(AbstractDiscreteSolver):
    r"""Analytic-DPM (Bao et al. 2022): the DDIM($\eta$) mean with the KL-optimal isotropic
    variance $v^*_{m|n} = \lambda^2 + \gamma^2\frac{1 - \bar a_n}{\bar a_n}(1 - \Gamma_n)$
    ([`optimal_variances`][scoredyn.analytic.optimal_variances]).

    Args:
        gamma: a [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or the array
            $\Gamma_n$ = `ms_eps`, shape `(N + 1,)`.
        eta: the forward process: 1 (default) is DDPM's ($\lambda^2 = \tilde\beta$), 0 gives
            Analytic-DDIM ([`AnalyticDDIM`][scoredyn.analytic.AnalyticDDIM]).
        data_range: `(a, b)` for data in a box (clips the variance, Eqs. 11-12), or `None`.
        clip: clip the variance into its bounds (the paper's practice).
        last_step_clip: cap the noise of the step landing on $\tau_1$ (see
            `optimal_variances`), or `None`.

    Example:
        ```python
        gamma = sd.analytic.estimate_gamma(key, sched, eps_net, data)
        res = sd.sample(key, sched, sd.EpsModel(eps_net), sd.analytic.AnalyticDPM(gamma),
                        sd.grids.even(1000, 25), x_T)
        ```

    References:
        Bao et al., *Analytic-DPM*, arXiv:2201.06503.
    """

    gamma: GammaEstimate | jnp.ndarray
    eta: float = 1.0
    data_range: tuple[float, float] | None = eqx.field(static=True, default=None)
    clip: bool = eqx.field(static=True, default=True)
    last_step_clip: float | None = None

    def __check_init__(self):
        check_eta(self.eta)
        check_data_range(self.data_range)

    def chain(self, sched: DiscreteSchedule, tau) -> Chain:
        tau = check_tau(tau, sched.num_steps)
        forward, eta = _forward(self.eta)
        v = optimal_variances(
            sched,
            tau,
            self.gamma,
            forward=forward,  # pyright: ignore
            eta=eta,
            data_range=self.data_range,
            clip=self.clip,
            last_step_clip=self.last_step_clip,
        )
        t, lam2 = _lam2(sched, tau, self.eta)
        return make_chain(sched, tau, lam2, v, terms=t)


def AnalyticDDIM(gamma, **kwargs) -> AnalyticDPM:
    r"""Analytic-DDIM: [`AnalyticDPM`][scoredyn.analytic.AnalyticDPM] with the deterministic
    DDIM mean ($\eta = 0$) and its optimal variance $v^* = \gamma^2\frac{1 - \bar a_n}{\bar a_n}
    (1 - \Gamma_n)$."""
    return AnalyticDPM(gamma, eta=0.0, **kwargs)


class _HeadSolver(AbstractDiscreteSolver):
    head: Callable
    eta: float = 1.0
    data_range: tuple[float, float] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not callable(self.head):
            raise TypeError(f"`head` must be callable (t, x) -> array like x, got {self.head!r}.")
        check_eta(self.eta)
        check_data_range(self.data_range)

    def _variance_fn(self, sched, forward, eta):
        raise NotImplementedError

    def chain(self, sched: DiscreteSchedule, tau) -> Chain:
        tau = check_tau(tau, sched.num_steps)
        forward, eta = _forward(self.eta)
        t, lam2 = _lam2(sched, tau, self.eta)
        return make_chain(sched, tau, lam2, self._variance_fn(sched, forward, eta), terms=t)


class SNDPM(_HeadSolver):
    r"""SN-DPM (Bao et al. 2022b): a diagonal, state-dependent variance from a head
    $h(t, x) \approx \mathbb E[\varepsilon^2\mid x_n]$
    ([`sn_variance_fn`][scoredyn.analytic.sn_variance_fn]); one extra head call per step.

    Args:
        head: $(t, x) \mapsto h$, shaped like `x`, called at $t_n = nT/N$.
        eta: forward process (1: DDPM, 0: DDIM).
        data_range: `(a, b)` for bounded data, or `None`.

    References:
        Bao et al., *Estimating the Optimal Covariance with Imperfect Mean in Diffusion
        Probabilistic Models*, arXiv:2206.07309.
    """

    def _variance_fn(self, sched, forward, eta):
        return sn_variance_fn(
            sched, self.head, forward=forward, eta=eta, data_range=self.data_range
        )


class NPRDPM(_HeadSolver):
    r"""NPR-DPM (Bao et al. 2022b): a diagonal variance from a head
    $g(t, x) \approx \mathbb E[(\varepsilon - \hat\varepsilon)^2\mid x_n]$
    ([`npr_variance_fn`][scoredyn.analytic.npr_variance_fn]).

    Args:
        head: $(t, x) \mapsto g$, shaped like `x`, called at $t_n = nT/N$.
        eta: forward process (1: DDPM, 0: DDIM).
        data_range: `(a, b)` for bounded data, or `None`.
    """

    def _variance_fn(self, sched, forward, eta):
        return npr_variance_fn(
            sched, self.head, forward=forward, eta=eta, data_range=self.data_range
        )
