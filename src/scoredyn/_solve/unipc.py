r"""UniPC: a multistep predictor (UniP) and corrector (UniC) in data prediction.

Notation: $\ell = \lambda/2 = \log(\alpha/\sigma)$ is half the code's log-SNR, $\hat x_0$ the
model's data prediction. From $s$ to $t$, $h = \ell_t - \ell_s$, the probability-flow ODE is
solved exactly by

$$x_t = \frac{\sigma_t}{\sigma_s}x_s
  + \sigma_t\int_{\ell_s}^{\ell_t} e^{\ell}\,\hat x_0(x_\ell, \ell)\,\mathrm d\ell,$$

and UniPC replaces $\hat x_0$ along the step by a polynomial in $\ell$ through the data
predictions of the last steps (UniP, no new evaluation) and, once the model has been evaluated
at the new point, through that one too (UniC). See
[UniPC](../derivations/unipc.md).
"""

import enum
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from .._checks import is_concrete
from .._custom_types import Key
from .._misc import check_vector_field
from .._model import AbstractModel
from .._sde import AbstractLinearSDE
from ._continuous import check_grid, check_linear_process, scan_states, with_start
from .base import AbstractSolver, AbstractState, Sample

_MAX_ORDER = 4


class UniPCVariant(enum.Enum):
    r"""The function $B(h)$ of UniPC's order conditions ($h$ in half log-SNR).

    - `BH1`: $B(h) = h$ (Zhao et al. recommend it for unconditional sampling at few steps);
    - `BH2`: $B(h) = e^h - 1$ (the default of diffusers and of the official code).

    $B(h)$ changes the result only where UniPC uses its simplified coefficient
    $\rho = \tfrac12$ (the order-2 predictor and the order-1 corrector); elsewhere the
    coefficients scale as $1/B(h)$ and $B(h)$ cancels (see
    [the derivation](../derivations/unipc.md#bh)).
    """

    BH1 = "bh1"
    BH2 = "bh2"


class UniPCInfo(NamedTuple):
    """Per-step info of [`UniPC`][scoredyn.UniPC]: the step's start and end times, the order of
    its predictor, and the model's data prediction at the start of the step (the point the
    step's evaluation was made at)."""

    t: Array
    t_next: Array
    order: Array
    x0: Array


class ModelX0(eqx.Module):
    """`model.x0(process, t, x, *cond)` as a data prediction `(t, x) -> array like x`."""

    model: AbstractModel
    process: AbstractLinearSDE
    cond: tuple

    def __call__(self, t, x):
        return self.model.x0(self.process, t, x, *self.cond)


class UniPCState(AbstractState):
    r"""State of [`UniPC`][scoredyn.UniPC] at `grid[i]`.

    `x` is the predictor's value at `grid[i]`, not yet corrected (the corrector needs the
    model's evaluation there, made at the start of the next step). `x_prev` is the corrected
    value at `grid[i-1]`, where the last step started; `x0s[k]` is the data prediction at
    `grid[i-1-k]` (newest first). The per-step tables (index $j$ = step $t_j \to t_{j+1}$) hold
    the coefficients of the update as a linear combination
    $x_{j+1} = c_x x_j + c_0 m_0 + \sum_k c_k (m_{-k} - m_0)\,[+\,c_n(m_{\rm new} - m_0)]$,
    computed once by `init` from the grid alone.
    """

    x: Array
    i: Array
    x_prev: Array
    x0s: Array
    grid: Array
    cx: Array
    c0: Array
    pred: Array
    corr: Array
    corr_new: Array
    use_corrector: Array
    order: Array
    x0_fn: ModelX0


def _phi_terms(hh, n_max: int):
    r"""diffusers' and the official code's recursion: $g_1 = \mathrm{expm1}(hh)/hh - 1$,
    $g_{n+1} = g_n/hh - 1/(n+1)!$, returned as $g_n\,n!$ for $n = 1..n_{\max}$."""
    g = jnp.expm1(hh) / hh - 1.0
    out, fact = [], 1.0
    for n in range(1, n_max + 1):
        out.append(g * fact)
        fact *= n + 1
        g = g / hh - 1.0 / fact
    return out


def _solve_order_conditions(nodes: list[Array], b: list[Array]) -> list[Array]:
    r"""The $\rho$ with $\sum_k \rho_k r_k^{n} = b_{n+1}$, $n = 0..q-1$ (the transposed
    Vandermonde system $R\rho = b$ of diffusers' `torch.linalg.solve(R, b)`), elementwise over
    the steps.

    $R^{-1}$ holds the monomial coefficients of the Lagrange basis: with
    $L_k(x) = \prod_{j \ne k}(x - r_j)/(r_k - r_j) = \sum_n c_{kn}x^n$,
    $\sum_n c_{kn}r_j^n = \delta_{kj}$, so $\rho_k = \sum_n c_{kn}b_{n+1}$. Unrolled for the
    few nodes UniPC uses, this compiles to a handful of operations (a batched LU solve is an
    order of magnitude more code).
    """
    q = len(nodes)
    rho = []
    for k in range(q):
        coef = [jnp.ones_like(nodes[0])]  # prod_{j != k} (x - r_j), lowest power first
        denom = jnp.ones_like(nodes[0])
        for j in range(q):
            if j == k:
                continue
            shifted = [jnp.zeros_like(coef[0]), *coef]
            scaled = [-nodes[j] * c for c in coef] + [jnp.zeros_like(coef[0])]
            coef = [u + v for u, v in zip(shifted, scaled)]
            denom = denom * (nodes[k] - nodes[j])
        rho.append(sum(c * bn for c, bn in zip(coef, b)) / denom)
    return rho


def _tables(sde, grid, order: int, variant: UniPCVariant, lower_order_final: bool, dtype):
    """Per-step coefficients (schedule only): cx, c0 (K,), predictor (K, order-1), corrector
    (K, order-1) and (K,), and the per-step order (K,)."""
    K = grid.shape[0] - 1
    alpha, sigma = jax.vmap(sde.marginal)(grid)
    alpha, sigma = alpha.astype(dtype), sigma.astype(dtype)
    ell = (0.5 * jax.vmap(sde.log_snr)(grid)).astype(dtype)  # log(alpha / sigma)
    a_t, s_t, s_s = alpha[1:], sigma[1:], sigma[:-1]
    h = ell[1:] - ell[:-1]
    zero_end = s_t == 0  # a step to sigma = 0 (h = inf): order 1, the data prediction itself
    cx = s_t / s_s
    c0 = -a_t * jnp.expm1(-h)  # alpha_t (1 - e^{-h})

    j = np.arange(K)
    static_order = np.minimum(order, j + 1)  # warm-up: the history holds j + 1 predictions
    if lower_order_final:
        static_order = np.minimum(static_order, K - j)
    p = jnp.where(zero_end, 1, jnp.asarray(static_order, jnp.int32))

    hs = jnp.where(zero_end, jnp.ones_like(h), h)  # finite stand-in where the order is 1
    hh = -hs
    gf = _phi_terms(hh, order)  # g_n n!, n = 1..order
    B = hh if variant is UniPCVariant.BH1 else jnp.expm1(hh)
    # r_k = (ell_{j-k} - ell_j) / h_j, k = 1..order-1; a placeholder -k where j - k < 0
    rs = []
    for k in range(1, order):
        valid = jnp.asarray(j - k >= 0)
        prev = ell[jnp.asarray(np.maximum(j - k, 0))]
        rs.append(jnp.where(valid, (prev - ell[:-1]) / hs, -float(k)))

    zeros = jnp.zeros((K, max(order - 1, 0)), dtype)
    pred = zeros
    corr = zeros
    corr_new = -a_t * B * 0.5  # order-1 corrector: rho = 1/2
    for q in range(2, order + 1):
        sel = (p == q)[:, None]
        r = jnp.stack(rs[: q - 1], axis=-1)  # (K, q - 1)
        # predictor of order q: q - 1 differences
        if q == 2:
            brho = (B * 0.5)[:, None]  # the simplified rho = 1/2
        else:
            rho = _solve_order_conditions(rs[: q - 1], [g / B for g in gf[: q - 1]])
            brho = B[:, None] * jnp.stack(rho, axis=-1)
        w = -a_t[:, None] * brho / r
        pred = jnp.where(sel, jnp.pad(w, ((0, 0), (0, order - q))), pred)
        # corrector of order q: q - 1 differences and the new point (r = 1)
        nodes = [*rs[: q - 1], jnp.ones_like(h)]
        rho_c = _solve_order_conditions(nodes, [g / B for g in gf[:q]])
        brho_c = B[:, None] * jnp.stack(rho_c, axis=-1)
        wc = -a_t[:, None] * brho_c[:, :-1] / r
        corr = jnp.where(sel, jnp.pad(wc, ((0, 0), (0, order - q))), corr)
        corr_new = jnp.where(p == q, -a_t * brho_c[:, -1], corr_new)
    return cx, c0, pred, corr, corr_new, p, zero_end


def _combine(cx, c0, w, x, x0s):
    r"""$c_x x + c_0 m_0 + \sum_k w_k (m_{-k} - m_0)$ with `x0s[0]` $= m_0$."""
    out = cx * x + c0 * x0s[0]
    for k in range(1, x0s.shape[0]):
        out = out + w[k - 1] * (x0s[k] - x0s[0])
    return out


def _correct(state: UniPCState, j, x0s_old, x0_new):
    """UniC of step j's result, from its (corrected) start `x_prev`, the predictions `x0s_old`
    (newest first, at grid[j], grid[j-1], ...) and the new one at grid[j+1]."""
    x = _combine(state.cx[j], state.c0[j], state.corr[j], state.x_prev, x0s_old)
    return x + state.corr_new[j] * (x0_new - x0s_old[0])


class UniPC(AbstractSolver):
    r"""UniPC (Zhao et al. 2023): the multistep UniP-$p$ predictor with the UniC corrector, in
    data prediction, on any strictly decreasing grid of a linear SDE.

    With $\ell = \log(\alpha/\sigma)$, $h_i = \ell_{i+1} - \ell_i$ and the data predictions
    $m_k = \hat x_0(t_k, x_k)$ = `model.x0(process, t_k, x_k, *cond)`, step $i$ of order $p$
    reads

    $$\tilde x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}x_i + \alpha_{i+1}(1 - e^{-h_i})\,m_i
      - \alpha_{i+1}B(h_i)\sum_{k=1}^{p-1}\rho^p_k D_k,\qquad
      D_k = \frac{m_{i-k} - m_i}{r_k},\ r_k = \frac{\ell_{i-k} - \ell_i}{h_i},$$

    where $\rho^p$ solves the order conditions $\sum_k \rho_k r_k^{n-1} = n!\,h\varphi_{n+1}(h)
    /B(h)$ ($\rho = \tfrac12$ for $p = 2$, as in diffusers). The next step evaluates the model
    at $\tilde x_{i+1}$; UniC-$p$ then replaces $\tilde x_{i+1}$ by the same update with one more
    node, $D_p = m_{i+1} - m_i$ at $r = 1$ ($\rho = \tfrac12$ for $p = 1$), at no extra
    evaluation: the corrected value is where step $i+1$ starts, while $m_{i+1}$ (made at
    $\tilde x_{i+1}$) enters the history. So UniPC-$p$ costs $K$ evaluations and has order
    $p + 1$ per step.

    The order of step $i$ is $\min(p, i + 1)$ (warm-up) and, with `lower_order_final`,
    $\le K - i$ (diffusers' rule, applied at every $K$). A step to $\sigma = 0$ (a grid ending
    at $t = 0$, diffusers' `final_sigmas_type="zero"`) has order 1 and returns
    $\alpha_K m_{K-1}$. The result at `grid[-1]` is the predictor's, uncorrected, unless
    `final_corrector=True` (one more evaluation). Deterministic.

    **Matching diffusers.** With the same noise levels, this is diffusers'
    `UniPCMultistepScheduler(solver_order=p, solver_type="bh1" | "bh2", predict_x0=True,
    lower_order_final=..., disable_corrector=[...])` to $10^{-12}$ in float64 (tested). Its
    time points in diffusers' numbering (timestep $\tau$ of $N$) are $n = \tau + 1$ of a
    schedule; see [the mapping](../derivations/unipc.md#diffusers). diffusers' `bh1` with a
    final $\sigma = 0$ returns NaN (it forms $B(h)\cdot 0$ with $B = -\infty$); here that
    step gives its limit, the data prediction.

    **Order.** `lower_order_final=True` (diffusers' default) makes the last step first order
    and uncorrected, which caps the global order at 2 whatever $p$; `lower_order_final=False`
    or `final_corrector=True` keep the higher order (measured slopes in
    [the derivation](../derivations/unipc.md#order-of-convergence)).

    Args:
        order: $p \in \{1, 2, 3, 4\}$ (diffusers' `solver_order`).
        variant: $B(h)$: `UniPC.BH2` ($e^h - 1$, default) or `UniPC.BH1` ($h$).
        lower_order_final: cap the order of step $i$ at $K - i$.
        corrector: apply UniC at all (False: UniP alone).
        disable_corrector: indices $i$ of steps whose result is not corrected (diffusers'
            `disable_corrector`).
        final_corrector: also correct the last step's result, at one more evaluation (the
            model at `grid[-1]`); then `nfe` is $K + 1$. Not with a grid ending at $\sigma = 0$.

    Raises:
        ValueError: at construction, for an `order` outside 1..4 or negative
            `disable_corrector` entries; in [`sample`][scoredyn.sample], for a grid that is not
            strictly decreasing inside $[0, T]$, or ending at $\sigma = 0$ with
            `final_corrector=True`.
        TypeError: for a `variant` that is not a `UniPCVariant` (e.g. the string `"bh1"`),
            non-bool flags, or a `process` that is not a linear SDE.

    Example:
        ```python
        grid = sd.grids.log_snr(sde, 10)
        res = sd.sample(None, sde, sd.EpsModel(eps), sd.UniPC(order=3), grid, x_T)
        res.stats["nfe"]   # 10
        ```

    References:
        Zhao et al., *UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
        Diffusion Models*, arXiv:2302.04867.
    """

    BH1: ClassVar[UniPCVariant] = UniPCVariant.BH1
    BH2: ClassVar[UniPCVariant] = UniPCVariant.BH2

    order: int = eqx.field(static=True, default=2)
    variant: UniPCVariant = eqx.field(static=True, default=UniPCVariant.BH2)
    lower_order_final: bool = eqx.field(static=True, default=True)
    corrector: bool = eqx.field(static=True, default=True)
    disable_corrector: tuple[int, ...] = eqx.field(static=True, default=())
    final_corrector: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if (
            isinstance(self.order, bool)
            or not isinstance(self.order, int)
            or not 1 <= self.order <= _MAX_ORDER
        ):
            raise ValueError(f"`order` must be an int in 1..{_MAX_ORDER}, got {self.order!r}.")
        if not isinstance(self.variant, UniPCVariant):
            raise TypeError(
                "`variant` must be sd.UniPC.BH1 (B(h) = h) or sd.UniPC.BH2 (B(h) = e^h - 1), "
                f"got {self.variant!r}."
            )
        for name in ("lower_order_final", "corrector", "final_corrector"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")
        dc = self.disable_corrector
        if not isinstance(dc, tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in dc
        ):
            raise TypeError(f"`disable_corrector` must be a tuple of step indices, got {dc!r}.")
        if any(i < 0 for i in dc):
            raise ValueError(f"`disable_corrector` must hold indices >= 0, got {dc!r}.")

    def nfe(self, num_steps: int) -> int:
        return num_steps + int(self.final_corrector)

    def is_stochastic(self, process, grid) -> bool:
        sde = check_linear_process(process, self)
        grid, _ = check_grid(grid, sde, float)
        self._check_final(sde, grid, None)
        return False

    def _check_final(self, sde, grid, x):
        """`final_corrector` would evaluate the model at sigma = 0: refused."""
        if not self.final_corrector:
            return x
        sig_end = sde.marginal(grid[-1])[1]
        msg = (
            "`final_corrector=True` needs a grid ending at sigma > 0 (it evaluates the model at "
            "grid[-1]); this grid ends at sigma = 0."
        )
        if is_concrete(sig_end):
            if float(sig_end) == 0.0:
                raise ValueError(msg)
            return x
        return None if x is None else eqx.error_if(x, sig_end == 0, msg)

    def _use_corrector(self, K: int) -> np.ndarray:
        use = np.full((K,), self.corrector)
        for i in self.disable_corrector:
            if i < K:
                use[i] = False
        if not self.final_corrector:
            use[K - 1] = False
        return use

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> UniPCState:
        sde = check_linear_process(process, self)
        grid, x_T = check_grid(grid, sde, x_T.dtype, x=x_T)
        checked = self._check_final(sde, grid, x_T)
        assert checked is not None
        x_T = checked
        x0_fn = ModelX0(model, sde, tuple(cond))
        check_vector_field(x0_fn, "model.x0", grid[0], x_T)
        K = grid.shape[0] - 1
        cx, c0, pred, corr, corr_new, p, _ = _tables(
            sde, grid, self.order, self.variant, self.lower_order_final, x_T.dtype
        )
        use = jnp.asarray(self._use_corrector(K))
        x0s = jnp.zeros((self.order, *x_T.shape), x_T.dtype)
        i = jnp.zeros((), jnp.int32)
        return UniPCState(x_T, i, x_T, x0s, grid, cx, c0, pred, corr, corr_new, use, p, x0_fn)

    def _advance(self, state: UniPCState) -> tuple[UniPCState, UniPCInfo]:
        """One step without the final correction: evaluate, correct the previous step's
        result, push the prediction, predict."""
        i = state.i
        m_new = state.x0_fn(state.grid[i], state.x)
        j = jnp.maximum(i - 1, 0)
        x_start = state.x
        if self.corrector:
            x_c = _correct(state, j, state.x0s, m_new)
            x_start = jnp.where((i > 0) & state.use_corrector[j], x_c, state.x)
        x0s = jnp.concatenate([m_new[None], state.x0s[:-1]], axis=0)
        x_next = _combine(state.cx[i], state.c0[i], state.pred[i], x_start, x0s)
        new = eqx.tree_at(
            lambda s: (s.x, s.i, s.x_prev, s.x0s), state, (x_next, i + 1, x_start, x0s)
        )
        info = UniPCInfo(state.grid[i], state.grid[i + 1], state.order[i], m_new)
        return new, info

    def _final(self, state: UniPCState) -> UniPCState:
        """UniC of the last step's result, at one more evaluation (`final_corrector`)."""
        K = state.grid.shape[0] - 1
        m_new = state.x0_fn(state.grid[K], state.x)
        x = _correct(state, K - 1, state.x0s, m_new)
        return eqx.tree_at(lambda s: s.x, state, x)

    def step(self, key: Key | None, state: AbstractState) -> tuple[UniPCState, UniPCInfo]:
        r"""One UniPC step $t_i \to t_{i+1}$ (`key` is unused): one evaluation of the model at
        `grid[i]`, UniC of the previous step's result, then UniP. With `final_corrector`, the
        last step also corrects its own result (a second evaluation)."""
        assert isinstance(state, UniPCState)
        new, info = self._advance(state)
        if self.final_corrector:
            K = state.grid.shape[0] - 1
            new = lax.cond(state.i == K - 1, self._final, lambda s: s, new)
        return new, info

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""`init`, a `lax.scan` of the step, and the final correction (if asked) once after
        it, outside the scan: the same values as the `step` loop, without a `cond` per step."""
        state = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)
        state, xs = scan_states(
            lambda st, _: self._advance(st)[0],
            state,
            jnp.arange(K, dtype=jnp.int32),
            save_trajectory,
        )
        if self.final_corrector:
            state = self._final(state)
            if save_trajectory:
                assert xs is not None
                xs = xs.at[-1].set(state.x)
        traj = with_start(x_T, xs) if save_trajectory else None
        return Sample(state.x, traj, {"nfe": self.nfe(K), "num_steps": K})
