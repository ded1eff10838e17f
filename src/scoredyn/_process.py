r"""The process protocol: what every sampler needs to know about a forward diffusion.

A *process* is a Gaussian forward diffusion $x_s = \alpha(s)\,x_0 + \sigma(s)\,\varepsilon$
indexed by its own coordinate $s$: a continuous time $t \in [0, T]$ for the linear SDEs
([`VPSDE`][scoredyn.VPSDE], ...), an integer index $n \in \{0, \dots, N\}$ for a
[`DiscreteSchedule`][scoredyn.DiscreteSchedule]. Both give

- `marginal(s) -> (alpha, sigma)`,
- `log_snr(s)` $= \lambda(s) = \log(\alpha^2/\sigma^2)$, decreasing in $s$,
- `time_at_log_snr(lam)`, the inverse of $\lambda$ (closed form where one exists),
- `model_time(s)`, the time at which a network is called ($t$ itself for an SDE,
  $t_n = nT/N$ for a schedule).

Every prediction conversion ([models](../api/models.md)) and every solver reads a process only
through these four methods, so a sampler written once runs on both kinds.
See [one protocol for all processes](../derivations/sampling-layer.md#processes).
"""

import abc

import equinox as eqx
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import Scalar


class AbstractProcess(eqx.Module):
    r"""A Gaussian forward process $x_s = \alpha(s)x_0 + \sigma(s)\varepsilon$ in its own
    coordinate $s$ (a time or an index).

    Subclasses implement [`marginal`][scoredyn.AbstractProcess.marginal],
    [`log_snr`][scoredyn.AbstractProcess.log_snr],
    [`time_at_log_snr`][scoredyn.AbstractProcess.time_at_log_snr] and
    [`model_time`][scoredyn.AbstractProcess.model_time].
    """

    @abc.abstractmethod
    def marginal(self, t, /) -> tuple[Scalar, Scalar]:
        r"""$(\alpha(s), \sigma(s))$ of $x_s \mid x_0$."""

    @abc.abstractmethod
    def log_snr(self, t, /) -> Scalar:
        r"""$\lambda(s) = \log(\alpha(s)^2/\sigma(s)^2)$, decreasing in $s$."""

    @abc.abstractmethod
    def time_at_log_snr(self, lam: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""The coordinate $s$ with $\lambda(s)$ equal to `lam` (the inverse of `log_snr`)."""

    @abc.abstractmethod
    def model_time(self, t, /) -> Float[Array, "..."]:
        r"""The time at which a network is evaluated at coordinate $s$."""
