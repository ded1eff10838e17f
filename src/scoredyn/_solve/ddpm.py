r"""DDPM's ancestral sampler (Ho et al. 2020) on any trajectory.

Forward process $\lambda^2 = \tilde\beta_{m|n} = \frac{1 - \bar a_m}{1 - \bar a_n}\beta_{n|m}$,
$\beta_{n|m} = 1 - \bar a_n/\bar a_m$; reverse variance $v = \tilde\beta_{m|n}$ (the small
choice) or $v = \beta_{n|m}$ (the large one). See [DDPM](../derivations/ddpm-vae.md).
"""

from .._discrete.posterior import pair_terms
from .._discrete.respace import check_tau
from .._discrete.schedule import DiscreteSchedule
from .discrete import AbstractDiscreteSolver, Chain, make_chain


class DDPM(AbstractDiscreteSolver):
    r"""DDPM ancestral sampling: mean of $q(x_m\mid x_n, \hat x_0)$ plus noise of variance
    $\tilde\beta_{m|n}$ (default) or $\beta_{n|m}$ (`large_variance=True`).

    No noise is added on the last step $\tau_1 \to 0$ unless `final_noise=True`. In the
    [bound][scoredyn.variational_bound] the decoder variance is $v_1$ where positive, else
    $v_2$ (Ho et al.'s clipped log-variance), else $\beta_{\tau_1|0}$ when $K = 1$.

    Args:
        large_variance: use $v = \beta_{n|m}$ instead of $\tilde\beta_{m|n}$.
        final_noise: add noise on the last step too.

    Example:
        ```python
        sched = sd.DiscreteSchedule.linear(1000)
        res = sd.sample(key, sched, sd.EpsModel(net), sd.DDPM(), sd.grids.even(1000, 100), x_T)
        ```

    References:
        Ho et al., *Denoising Diffusion Probabilistic Models*, arXiv:2006.11239.
    """

    large_variance: bool = False
    final_noise: bool = False

    def __check_init__(self):
        for name in ("large_variance", "final_noise"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")

    def chain(self, sched: DiscreteSchedule, tau) -> Chain:
        tau = check_tau(tau, sched.num_steps)
        t = pair_terms(sched, tau[1:], tau[:-1])
        v = t.beta_nm if self.large_variance else t.beta_tilde
        return make_chain(sched, tau, t.beta_tilde, v, final_noise=self.final_noise, terms=t)
