r"""Discrete noise schedules: a linear diffusion sampled at $N + 1$ integer times.

A schedule is the array $\bar a_n$, $n = 0, \dots, N$, with $\bar a_0 = 1$, strictly
decreasing. In the code's notation the discrete marginal is

$$x_n = \alpha_n x_0 + \sigma_n\varepsilon,\qquad \alpha_n = \sqrt{\bar a_n},\quad
  \sigma_n = \sqrt{1 - \bar a_n},$$

and the one-step DDPM noise rate is $\beta_n = 1 - \bar a_n/\bar a_{n-1}$.
See [DDPM as an autoregressive VAE](../derivations/ddpm-vae.md#the-forward-chain).
"""

import math

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._checks import check_float_dtype, check_int, concrete_value, real_float, runtime_check
from .._custom_types import Scalar
from .._misc import as_float, is_concrete, log1mexp
from .._process import AbstractProcess
from .._sde import AbstractLinearSDE


def _check_num_steps(num_steps, name: str = "num_steps") -> int:
    return check_int(num_steps, name)


def _check_open_unit(value, name: str) -> None:
    """Concrete scalar in the open interval (0, 1)."""
    arr = concrete_value(value)
    if arr is None:
        return
    v = real_float(value, name)
    if not (0.0 < v < 1.0):  # also rejects NaN
        raise ValueError(f"`{name}` must lie in the open interval (0, 1), got {v}.")


def _dtype(dtype):
    return check_float_dtype(dtype, "dtype")


class DiscreteSchedule(AbstractProcess):
    r"""A discrete diffusion schedule $\bar a_0 = 1 > \bar a_1 > \dots > \bar a_N > 0$.

    The schedule is stored through $\log\bar a_n$, built as a cumulative sum of
    $\log(1 - \beta_n)$ (`log1p`), so that $1 - \bar a_n = -\operatorname{expm1}(\log\bar a_n)$
    stays accurate near $n = 0$ even in float32. Build one with
    [`linear`][scoredyn.DiscreteSchedule.linear], [`cosine`][scoredyn.DiscreteSchedule.cosine] or
    [`from_sde`][scoredyn.DiscreteSchedule.from_sde], or pass $\bar a$ (or $\log\bar a$)
    directly.

    A network of continuous time is called at $t_n = n T / N$
    ([`time`][scoredyn.DiscreteSchedule.time]);
    $T = 1$ unless the schedule was sampled from an SDE with another end time.

    Args:
        alpha_bar: $\bar a$, shape `(N + 1,)`, with `alpha_bar[0] == 1`.
        log_alpha_bar: alternatively $\log\bar a$, with `log_alpha_bar[0] == 0`.
        T: the continuous time of index $N$ (used only to call networks at $t_n = nT/N$).

    Raises:
        ValueError: for a wrong shape, `alpha_bar[0] != 1`, values that are not strictly
            decreasing, not in $(0, 1]$ or not finite (checked on concrete values).

    Example:
        ```python
        sched = sd.DiscreteSchedule.linear(num_steps=1000)   # Ho et al. (2020)
        sched.alpha_bar.shape                                # (1001,)
        alpha_n, sigma_n = sched.marginal(500)
        ```
    """

    log_alpha_bar: Float[Array, " num_indices"]
    alpha_bar: Float[Array, " num_indices"]
    one_minus_alpha_bar: Float[Array, " num_indices"]
    T: float = 1.0

    def __init__(
        self,
        alpha_bar: Float[ArrayLike, " num_indices"] | None = None,
        *,
        log_alpha_bar: Float[ArrayLike, " num_indices"] | None = None,
        T: float = 1.0,
    ):
        if (alpha_bar is None) == (log_alpha_bar is None):
            raise ValueError("pass exactly one of `alpha_bar` and `log_alpha_bar`.")
        if log_alpha_bar is not None:
            la = as_float(log_alpha_bar, "log_alpha_bar")
            name = "log_alpha_bar"
            if la.ndim != 1 or la.shape[0] < 2:
                raise ValueError(f"`{name}` must have shape (N + 1,) with N >= 1, got {la.shape}.")
            self.log_alpha_bar = la
            self.alpha_bar = jnp.exp(la)
            self.one_minus_alpha_bar = -jnp.expm1(la)
        else:
            assert alpha_bar is not None
            ab = as_float(alpha_bar, "alpha_bar")
            name = "alpha_bar"
            if ab.ndim != 1 or ab.shape[0] < 2:
                raise ValueError(f"`{name}` must have shape (N + 1,) with N >= 1, got {ab.shape}.")
            self.alpha_bar = ab
            self.log_alpha_bar = jnp.log(ab)
            self.one_minus_alpha_bar = 1.0 - ab
        if concrete_value(T) is not None:
            Tv = real_float(T, "T")
            if not (math.isfinite(Tv) and Tv > 0):
                raise ValueError(f"`T` must be > 0 and finite, got {T}.")
        self.T = T
        if not is_concrete(self.log_alpha_bar):
            # run-time tier: a traced schedule (built under jit, vmap or grad) is checked when
            # the program runs; the three arrays carry the check so it cannot be dropped
            la = self.log_alpha_bar
            bad = (la[0] != 0) | ~jnp.all(jnp.isfinite(la)) | ~jnp.all(la[1:] < la[:-1])
            msg = (
                f"`{name}` must give alpha_bar[0] = 1 > alpha_bar[1] > ... > alpha_bar[N] > 0 "
                "(strictly decreasing, finite)."
            )
            self.log_alpha_bar, self.alpha_bar, self.one_minus_alpha_bar = runtime_check(
                (la, self.alpha_bar, self.one_minus_alpha_bar), bad, msg
            )
        if is_concrete(self.log_alpha_bar):
            la = jax.device_get(self.log_alpha_bar)
            if la[0] != 0.0:
                raise ValueError(
                    f"`{name}[0]` must be exactly {1 if name == 'alpha_bar' else 0} "
                    f"(alpha_bar[0] = 1: no noise at n = 0), got alpha_bar[0] = "
                    f"{float(np.exp(la[0]))}."
                )
            if not bool((la[1:] > -np.inf).all() and np.isfinite(la).all()):
                raise ValueError(f"`{name}` must give 0 < alpha_bar <= 1 and be finite.")
            if not bool((la[1:] < la[:-1]).all()):
                bad = int(np.argmax(la[1:] >= la[:-1])) + 1
                raise ValueError(
                    f"`{name}` must be strictly decreasing in n, but alpha_bar[{bad}] >= "
                    f"alpha_bar[{bad - 1}]."
                )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(
        cls,
        num_steps: int = 1000,
        beta_start: float | Scalar = 1e-4,
        beta_end: float | Scalar = 0.02,
        *,
        dtype=None,
    ) -> "DiscreteSchedule":
        r"""Ho et al.'s linear schedule: $\beta_n$ evenly spaced from `beta_start` to `beta_end`.

        $$\beta_n = \beta_{\text{start}}
          + \frac{n - 1}{N - 1}(\beta_{\text{end}} - \beta_{\text{start}}),
          \qquad \log\bar a_n = \sum_{i=1}^{n}\log(1 - \beta_i).$$

        With `beta_start = beta_min / N`, `beta_end = beta_max / N` it converges to the
        [`VPSDE`][scoredyn.VPSDE]'s $\alpha(t)^2$ at $t = n/N$ as $N \to \infty$, at first
        order in $1/N$ ([derivation](../derivations/discrete-to-continuous.md#schedules)).

        Args:
            num_steps: $N \ge 1$.
            beta_start: $\beta_1 \in (0, 1)$.
            beta_end: $\beta_N \in (0, 1)$, $\ge$ `beta_start`.
            dtype: float dtype (default: float64 under x64, else float32).

        Raises:
            ValueError: for $N < 1$, betas outside $(0, 1)$ or `beta_end < beta_start`.

        References:
            Ho, Jain, Abbeel, *Denoising Diffusion Probabilistic Models*, arXiv:2006.11239.
        """
        num_steps = _check_num_steps(num_steps)
        _check_open_unit(beta_start, "beta_start")
        _check_open_unit(beta_end, "beta_end")
        b0v, b1v = concrete_value(beta_start), concrete_value(beta_end)
        if b0v is not None and b1v is not None and float(b1v) < float(b0v):  # real: checked
            raise ValueError(
                f"`beta_end` must be >= `beta_start`, got beta_start={beta_start}, "
                f"beta_end={beta_end}."
            )
        dtype = _dtype(dtype)
        frac = jnp.arange(num_steps, dtype=dtype) / max(num_steps - 1, 1)
        b0 = jnp.asarray(beta_start, dtype)
        b1 = jnp.asarray(beta_end, dtype)
        betas = b0 + frac * (b1 - b0)
        return cls.from_betas(betas)

    @classmethod
    def cosine(
        cls,
        num_steps: int = 1000,
        s: float | Scalar = 0.008,
        max_beta: float | Scalar = 0.999,
        *,
        dtype=None,
    ) -> "DiscreteSchedule":
        r"""The cosine schedule of Nichol & Dhariwal (2021), with its clip $\beta_n \le$ `max_beta`.

        With $f(t) = \cos^2\!\big(\tfrac{\pi}{2}\tfrac{t + s}{1 + s}\big)$ and $t_n = n/N$,
        $\beta_n = \min\big(1 - f(t_n)/f(t_{n-1}),\ \beta_{\max}\big)$. The ratio is computed as
        $1 - \cos^2 a/\cos^2 b = \sin(a + b)\sin(a - b)/\cos^2 b$, which has no cancellation
        for small steps. Without the clip, $\bar a_n = f(t_n)/f(0)$ exactly; the clip only
        changes the last few steps (where $\bar a_N$ would reach 0).

        Args:
            num_steps: $N \ge 1$.
            s: offset $s > 0$.
            max_beta: clip, in $(0, 1)$.
            dtype: float dtype (default: float64 under x64, else float32).

        References:
            Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*,
            arXiv:2102.09672.
        """
        num_steps = _check_num_steps(num_steps)
        if concrete_value(s) is not None:
            sv = real_float(s, "s")
            if not (sv > 0 and math.isfinite(sv)):
                raise ValueError(f"`s` must be > 0 and finite, got {sv}.")
        _check_open_unit(max_beta, "max_beta")
        dtype = _dtype(dtype)
        s = jnp.asarray(s, dtype)
        n = jnp.arange(1, num_steps + 1, dtype=dtype)
        scale = 0.5 * math.pi / (1.0 + s)
        a = scale * (n / num_steps + s)  # angle at t_n
        b = scale * ((n - 1) / num_steps + s)  # angle at t_{n-1}
        step = scale / num_steps  # a - b, exactly
        betas = jnp.sin(a + b) * jnp.sin(step) / jnp.cos(b) ** 2
        betas = jnp.minimum(betas, jnp.asarray(max_beta, dtype))
        return cls.from_betas(betas)

    @classmethod
    def from_betas(cls, betas: Float[ArrayLike, " N"], *, T: float = 1.0) -> "DiscreteSchedule":
        r"""A schedule from its one-step rates $\beta_1, \dots, \beta_N \in (0, 1)$ (shape `(N,)`).

        $\log\bar a_n = \sum_{i \le n}\operatorname{log1p}(-\beta_i)$ (a cumulative sum, no
        cumulative product).
        """
        b = concrete_value(betas)
        # check values (in NumPy) before any JAX operation touches a NaN (jax_debug_nans)
        if (
            b is not None
            and b.ndim == 1
            and (np.issubdtype(b.dtype, np.floating) or np.issubdtype(b.dtype, np.integer))
        ):
            if not bool(((b > 0) & (b < 1)).all()):
                bad = int(np.argmax(~((b > 0) & (b < 1))))
                raise ValueError(
                    f"`betas` must lie in the open interval (0, 1), got betas[{bad}] = {b[bad]} "
                    f"(1-based step n = {bad + 1})."
                )
        betas = as_float(betas, "betas")
        if betas.ndim != 1 or betas.shape[0] < 1:
            raise ValueError(f"`betas` must have shape (N,) with N >= 1, got {betas.shape}.")
        if b is None:  # traced: checked when the program runs (beta = 1 would give alpha_bar = 0)
            betas = runtime_check(
                betas,
                ~jnp.all((betas > 0) & (betas < 1)),
                "`betas` must lie in the open interval (0, 1).",
            )
        zero = jnp.zeros((1,), betas.dtype)
        log_ab = jnp.concatenate([zero, jnp.cumsum(jnp.log1p(-betas))])
        return cls(log_alpha_bar=log_ab, T=T)

    @classmethod
    def from_sde(cls, sde: AbstractLinearSDE, num_steps: int, *, dtype=None) -> "DiscreteSchedule":
        r"""Sample a linear SDE at $t_n = nT/N$, keeping its log-SNR $\lambda(t_n)$.

        $\bar a_n = \operatorname{sigmoid}(\lambda(t_n))$.

        For a variance-preserving SDE ($\alpha^2 + \sigma^2 = 1$: [`VPSDE`][scoredyn.VPSDE],
        [`CosineVPSDE`][scoredyn.CosineVPSDE]) this is exactly $\bar a_n = \alpha(t_n)^2$.
        For any other linear SDE (VE, sub-VP) the schedule is that of the VP process with the
        same log-SNR, $x^{\mathrm{VP}}_t = x_t/\sqrt{\alpha(t)^2 + \sigma(t)^2}$; networks and
        samples must be rescaled by that factor (the data $x_0$ are unchanged).
        $\log\bar a_n = -\operatorname{softplus}(-\lambda(t_n))$ is evaluated stably and
        $\bar a_0 = 1$ is set exactly. The schedule's `T` is the SDE's, so
        [`time`][scoredyn.DiscreteSchedule.time] returns $t_n$.

        Args:
            sde: a linear SDE.
            num_steps: $N \ge 1$.
            dtype: float dtype (default: float64 under x64, else float32).
        """
        if not isinstance(sde, AbstractLinearSDE):
            raise TypeError(
                f"`sde` must be a linear SDE (AbstractLinearSDE), got {type(sde).__name__}."
            )
        num_steps = _check_num_steps(num_steps)
        dtype = _dtype(dtype)
        t = jnp.arange(1, num_steps + 1, dtype=dtype) * (sde.T / num_steps)
        lam = jax.vmap(sde.log_snr)(t).astype(dtype)
        log_ab = jnp.concatenate([jnp.zeros((1,), dtype), -jax.nn.softplus(-lam)])
        return cls(log_alpha_bar=log_ab, T=sde.T)

    # ------------------------------------------------------------------ derived quantities
    @property
    def num_steps(self) -> int:
        """$N$, the number of steps (a Python int)."""
        return self.log_alpha_bar.shape[0] - 1

    @property
    def dtype(self):
        """The float dtype of the schedule."""
        return self.log_alpha_bar.dtype

    @property
    def betas(self) -> Float[Array, " num_indices"]:
        r"""$\beta_n = 1 - \bar a_n/\bar a_{n-1}$, shape `(N + 1,)`, with `betas[0] = 0`."""
        step = -jnp.expm1(jnp.diff(self.log_alpha_bar))
        return jnp.concatenate([jnp.zeros((1,), step.dtype), step])

    def log_snr(self, n: Int[ArrayLike, "..."] | None = None) -> Float[Array, "..."]:
        r"""Log-SNR $\lambda_n = \log\bar a_n - \log(1 - \bar a_n)$ at the integer index `n`
        (any shape), or the whole table, shape `(N + 1,)`, when `n` is `None`.

        $\lambda_0 = +\infty$.
        """
        la = self.log_alpha_bar
        if n is not None:
            la = la[check_index(n, self.num_steps, "n")]
        return la - log1mexp(la)

    def time_at_log_snr(self, lam: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""The (fractional) index $s \in [1, N]$ with $\lambda(s)$ equal to `lam`, by linear
        interpolation of $\lambda$ between neighbouring integer indices.

        Exact at the nodes: `time_at_log_snr(log_snr(n)) == n` for $1 \le n \le N$. A `lam`
        above $\lambda_1$ gives 1 and one below $\lambda_N$ gives $N$ (index 0, clean data, has
        $\lambda_0 = +\infty$ and is never the answer).
        """
        lam = as_float(lam, "lam")
        table = self.log_snr()[1:].astype(lam.dtype)  # decreasing in n
        nodes = jnp.arange(1, self.num_steps + 1, dtype=lam.dtype)
        return jnp.interp(-lam, -table, nodes)

    def model_time(self, n: Int[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""The time $t_n = nT/N$ at which a network is called at index `n`
        (the same as [`time`][scoredyn.DiscreteSchedule.time])."""
        return self.time(n)

    @property
    def times(self) -> Float[Array, " num_indices"]:
        r"""The continuous times $t_n = nT/N$, shape `(N + 1,)`."""
        return jnp.arange(self.num_steps + 1, dtype=self.dtype) * (self.T / self.num_steps)

    def time(self, n: Int[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""The continuous time $t_n = nT/N$ at which networks are called."""
        return jnp.asarray(n).astype(self.dtype) * (self.T / self.num_steps)

    def marginal(self, n: Int[ArrayLike, "..."]) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        r"""$(\alpha_n, \sigma_n) = (\sqrt{\bar a_n}, \sqrt{1 - \bar a_n})$ for an integer `n`.

        `n` may be traced.

        Raises:
            ValueError: if a concrete `n` lies outside $\{0, \dots, N\}$ or is not an integer.
        """
        n = check_index(n, self.num_steps, "n")
        return jnp.exp(0.5 * self.log_alpha_bar[n]), jnp.sqrt(self.one_minus_alpha_bar[n])


def check_index(n, num_steps: int, name: str = "n") -> Array:
    """An integer index in {0..N}: checked at trace time if concrete, else with `eqx.error_if`."""
    val = concrete_value(n)
    if val is not None:
        if isinstance(n, bool) or not np.issubdtype(val.dtype, np.integer):
            raise TypeError(f"`{name}` must be an integer step index, got {n!r}.")
        if val.size and (val.min() < 0 or val.max() > num_steps):
            raise ValueError(f"`{name}` must lie in 0..N = 0..{num_steps}, got {val}.")
        return jnp.asarray(val.astype(np.int32))
    arr = jnp.asarray(n)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"`{name}` must be an integer step index, got dtype {arr.dtype}.")
    return eqx.error_if(
        arr, (arr < 0) | (arr > num_steps), f"`{name}` must lie in 0..N={num_steps}."
    )
