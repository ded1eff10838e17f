r"""Discrete-time solvers hold a whole reverse chain: the DDIM family on a trajectory.

A discrete solver bound to a schedule and a trajectory is a [`Chain`][scoredyn.Chain]: for each
step $k$ ($n = \tau_k \to m = \tau_{k-1}$) the forward variance $\lambda_k^2$ that sets the mean
and the reverse variance $v_k$ of the noise, plus the decoder variance of the last step
$\tau_1 \to 0$. One step is

$$x_m = \frac{\alpha_m}{\alpha_n}x_n - c_0\frac{\sigma_n}{\alpha_n}\hat\varepsilon
  + \sqrt{v_k}\,z,$$

with $c_0$ the $x_0$-coefficient of $q_{\lambda}(x_m\mid x_n, x_0)$
([`forward_posterior`][scoredyn.forward_posterior]). [`sample`][scoredyn.sample] runs the chain
and [`variational_bound`][scoredyn.variational_bound] scores the same value, so a sampler and its
bound can never disagree. A new discrete solver only says how to build its chain.
See [the DDIM family](../derivations/ddim.md#sampling).
"""

import abc
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from .._discrete.posterior import PairTerms, check_lam2, pair_terms
from .._discrete.respace import check_tau
from .._discrete.schedule import DiscreteSchedule, concrete_value
from .._discrete.step import CheckedVarianceFn, StepCoeffs, check_var, step_coefficients
from .._misc import safe_sqrt
from .._model import AbstractModel
from .base import AbstractSolver, AbstractState, Sample, SolverKey, map_key, normal_like

VarianceFn = Callable[[Array, Array, Array, Array], Array]


class Chain(eqx.Module):
    r"""A reverse chain on a trajectory: what a discrete sampler runs and its bound scores.

    Attributes:
        tau: the trajectory, shape `(K + 1,)`, $0 = \tau_0 < \dots < \tau_K = N$.
        lam2: $\lambda_k^2$, shape `(K,)` (entry $k - 1$ for the step $\tau_k \to \tau_{k-1}$):
            the forward variance of $q_\lambda(x_m\mid x_n, x_0)$ whose mean the reverse step
            takes, $0 \le \lambda_k^2 \le 1 - \bar a_m$.
        variances: the reverse variances $v_k$, shape `(K,)`, or a callable
            `(n, m, x_n, eps_hat) -> v` (a state-dependent diagonal variance, SN-/NPR-DPM).
        decoder_var: the variance of the decoder $p(x_0\mid x_{\tau_1})$ in the bound (a
            scalar array), or `None` to use the callable's value at the last step.
        forward_lam2: the variational posterior's $\lambda^2$ in the bound, shape `(K,)`, when it
            differs from `lam2` (e.g. a DDIM mean scored under DDPM's $q$); `None` means `lam2`.
        final_noise: whether the sampler adds noise on the last step too (static).
    """

    tau: Int[Array, " num_points"]
    lam2: Float[Array, " K"]
    variances: Float[Array, " K"] | VarianceFn
    decoder_var: Float[Array, ""] | None
    forward_lam2: Float[Array, " K"] | None = None
    final_noise: bool = eqx.field(static=True, default=False)

    @property
    def num_steps(self) -> int:
        """$K$."""
        return self.tau.shape[0] - 1


def known_zero(a) -> bool:
    val = concrete_value(a)
    return val is not None and bool(np.all(val == 0))


def default_decoder_var(t: PairTerms, variances) -> Array | None:
    r"""Ho et al.'s decoder variance: $v_1$, or, where the DDPM choice
    $v_1 = \tilde\beta_{0|\tau_1} = 0$ is degenerate, $v_2$ (their clipped log-variance), or
    $\beta_{\tau_1|0} = 1 - \bar a_{\tau_1}$ when $K = 1$. `None` for a callable variance."""
    if callable(variances):
        return None
    fallback = variances[1] if variances.shape[0] >= 2 else t.beta_nm[0]
    return jnp.where(variances[0] > 0, variances[0], fallback)


def make_chain(
    sched: DiscreteSchedule,
    tau,
    lam2,
    variances,
    *,
    decoder_var=None,
    forward_lam2=None,
    final_noise: bool = False,
    terms: PairTerms | None = None,
) -> Chain:
    r"""Build a [`Chain`][scoredyn.Chain] from its parts.

    User-supplied parts are checked (lengths; $0 \le \lambda^2 \le 1 - \bar a_m$; $v \ge 0$).
    A solver that formed them from the schedule's own pair terms passes those as `terms`,
    and they are trusted as built (no run-time checks in the compiled sampler).
    """
    tau = check_tau(tau, sched.num_steps)
    K = tau.shape[0] - 1
    if terms is not None:
        dtype = terms.beta_tilde.dtype
        if decoder_var is None:
            decoder_var = default_decoder_var(terms, variances)
        return Chain(
            tau, jnp.asarray(lam2, dtype), variances, decoder_var, forward_lam2, final_noise
        )
    t = pair_terms(sched, tau[1:], tau[:-1])
    lam2 = check_lam2(jnp.broadcast_to(jnp.asarray(lam2, t.beta_tilde.dtype), (K,)), t.sigma2_m)
    if forward_lam2 is not None:
        forward_lam2 = check_lam2(
            jnp.broadcast_to(jnp.asarray(forward_lam2, t.beta_tilde.dtype), (K,)),
            t.sigma2_m,
            "forward_lam2",
        )
    if callable(variances):
        # a user's rule: its output is checked when the program runs (negative or NaN raises)
        if not isinstance(variances, CheckedVarianceFn):
            variances = CheckedVarianceFn(variances, "variances")
    else:
        variances = check_var(variances, "variances")
        if variances.shape != (K,):
            raise ValueError(
                f"`variances` must have shape (K,) = ({K},) (entry k-1 for step tau[k] -> "
                f"tau[k-1]), got {variances.shape}."
            )
        variances = variances.astype(t.beta_tilde.dtype)
    if decoder_var is None:
        decoder_var = default_decoder_var(t, variances)
    else:
        decoder_var = check_var(decoder_var, "decoder_var")
    return Chain(tau, lam2, variances, decoder_var, forward_lam2, final_noise)  # pyright: ignore[reportArgumentType]


class DiscreteState(AbstractState):
    """State of a discrete solver: `x` at `tau[k + 1]`, the next pair index `k` (counts down
    from K - 1 to 0), and the per-step constants computed once by `init`."""

    x: Array
    k: Array
    model: AbstractModel
    cond: tuple
    coeffs: StepCoeffs
    times: Array
    std: Array
    n: Array
    m: Array
    var_fn: VarianceFn | None
    stochastic: bool = eqx.field(static=True)


class DiscreteInfo(NamedTuple):
    """Per-step info of a discrete solver: the indices of the step and the model's
    $\\hat\\varepsilon$ and $\\hat x_0$ at $x_n$."""

    n: Array
    m: Array
    eps: Array
    x0: Array


class AbstractDiscreteSolver(AbstractSolver):
    r"""A solver of a [`DiscreteSchedule`][scoredyn.DiscreteSchedule] on an integer trajectory.

    Subclasses implement only [`chain`][scoredyn.AbstractDiscreteSolver.chain]; `init`, `step`
    and the whole solve are shared.
    """

    @abc.abstractmethod
    def chain(self, sched: DiscreteSchedule, tau) -> Chain:
        r"""The reverse chain of this solver on `sched` along `tau`."""

    def _check_process(self, process) -> DiscreteSchedule:
        if not isinstance(process, DiscreteSchedule):
            raise TypeError(
                f"{type(self).__name__} runs on an sd.DiscreteSchedule (integer trajectories); "
                f"got {type(process).__name__}. Use sd.DiscreteSchedule.from_sde(sde, N) for a "
                "linear SDE."
            )
        return process

    def is_stochastic(self, process, grid) -> bool:
        """Static: `False` only when the solver knows it adds no noise (one step without
        `final_noise`, or a subclass that knows its variances are zero)."""
        self._check_process(process)
        return not (jnp.shape(grid)[0] == 2 and not getattr(self, "final_noise", False))

    def grid_order(self, trajectory):
        return trajectory[::-1]

    def step_key(self, key, i, num_steps):
        # the pair index counts down; folding it in keeps the bits of scoredyn 0.1's sampler
        return map_key(lambda k: jax.random.fold_in(k, num_steps - 1 - i), key)

    def batch_noise(self) -> bool:
        return True

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> DiscreteState:
        sched = self._check_process(process)
        chain = self.chain(sched, grid)
        return init_chain(chain, sched, model, x_T, cond, self.is_stochastic(sched, grid))

    def step(
        self, key: SolverKey | None, state: AbstractState
    ) -> tuple[DiscreteState, DiscreteInfo]:
        assert isinstance(state, DiscreteState)
        return chain_step(key, state)

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        # The step loop with the per-step constants scanned over rather than indexed: XLA then
        # fuses the body exactly as scoredyn 0.1's sampler did, so the bits are the same.
        st = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)
        xs = (st.coeffs, st.times, st.std, st.n, st.m, jnp.arange(K, dtype=jnp.int32))
        xs = jax.tree_util.tree_map(lambda a: a[::-1], xs)

        def body(x, s):
            c, t, std, n, m, k = s
            kk = None if key is None else map_key(lambda kf: jax.random.fold_in(kf, k), key)
            x_new, _ = _reverse_step(kk, st, c, t, std, n, m, x)
            return x_new, (x_new if save_trajectory else None)

        x, ys = lax.scan(body, x_T, xs)
        traj = None
        if save_trajectory:
            assert ys is not None
            traj = self.grid_order(jnp.concatenate([x_T[None], ys], axis=0))
        return Sample(x, traj, {"nfe": self.nfe(K), "num_steps": K})


def init_chain(
    chain: Chain, sched: DiscreteSchedule, model, x_T, cond=(), stochastic: bool = True
) -> DiscreteState:
    """Per-step constants of `chain`, computed once (outside any loop), in x_T's dtype."""
    tau = chain.tau
    K = chain.num_steps
    n_arr, m_arr = tau[1:], tau[:-1]
    t = pair_terms(sched, n_arr, m_arr)
    dtype = x_T.dtype
    coeffs = jax.tree_util.tree_map(lambda a: a.astype(dtype), step_coefficients(t, chain.lam2))
    mask = np.ones((K,), np.float64)
    if not chain.final_noise:
        mask[0] = 0.0  # no noise on the decoder step tau[1] -> 0
    mask = jnp.asarray(mask, dtype)
    variances = chain.variances
    var_fn = variances if callable(variances) else None
    if callable(variances):
        std = mask
    else:
        std = safe_sqrt(variances.astype(dtype)) * mask  # safe: d sqrt(v)/dv at v = 0
    return DiscreteState(
        x=x_T,
        k=jnp.asarray(K - 1, jnp.int32),
        model=model,
        cond=tuple(cond),
        coeffs=coeffs,
        times=sched.time(n_arr).astype(dtype),
        std=std,
        n=n_arr,
        m=m_arr,
        var_fn=var_fn,
        stochastic=stochastic,
    )


def _reverse_step(key, st: DiscreteState, c: StepCoeffs, t, std, n, m, x):
    eps = st.model.eps_at(c.alpha_n, c.sigma_n, t, x, *st.cond)
    x_new = c.a * x + c.b * eps
    if st.stochastic:
        if key is None:
            raise ValueError("this chain adds noise: `step` needs a key.")
        z = normal_like(key, x)
        if st.var_fn is None:
            x_new = x_new + std * z
        else:
            v = jnp.asarray(st.var_fn(n, m, x, eps), x.dtype)
            x_new = x_new + std * safe_sqrt(v) * z
    return x_new, eps


def chain_step(key, state: DiscreteState) -> tuple[DiscreteState, DiscreteInfo]:
    r"""One step $\tau_{k+1} \to \tau_k$ of the chain (the generalised DDIM step)."""
    k = state.k
    c = jax.tree_util.tree_map(lambda a: a[k], state.coeffs)
    n, m = state.n[k], state.m[k]
    x = state.x
    x_new, eps = _reverse_step(key, state, c, state.times[k], state.std[k], n, m, x)
    info = DiscreteInfo(n, m, eps, c.inv_alpha_n * x - c.soa_n * eps)
    return eqx.tree_at(lambda s: (s.x, s.k), state, (x_new, k - 1)), info
