"""Gaussian mixtures: exact oracles for every linear diffusion."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jaxtyping import Array, ArrayLike, Float

from .._checks import runtime_check
from .._custom_types import Key, Scalar, Time
from .._misc import as_float, check_time, is_concrete
from .._sde import AbstractLinearSDE


class GaussianMixture(eqx.Module):
    r"""A mixture $p(x) = \sum_k w_k\,\mathcal N(x; m_k, C_k)$ with full covariances.

    Under any linear diffusion $x_t = \alpha x_0 + \sigma\varepsilon$ the marginal is again a
    mixture, with the same weights, means $\alpha m_k$ and covariances $\alpha^2 C_k + \sigma^2 I$.
    Each $C_k = U_k \operatorname{diag}(\ell_k) U_k^\top$ is diagonalised once at construction, so
    $\alpha^2 C_k + \sigma^2 I = U_k\operatorname{diag}(\alpha^2\ell_k + \sigma^2)U_k^\top$ is
    inverted and log-determined in $O(d^2)$ for any $(\alpha, \sigma)$, with no factorisation
    per call. The exact score, $\varepsilon$-prediction, posterior $p(x_0\mid x_t)$ and its
    moments follow in closed form.

    Args:
        weights: shape `(k,)`, non-negative, summing to one.
        means: shape `(k, d)`.
        covs: shape `(k, d, d)`, symmetric positive definite.

    Raises:
        ValueError: for mismatched shapes, negative or NaN weights, weights not summing to one,
            means that are not finite, or covariances that are not symmetric positive definite
            (at once on concrete values; traced ones are checked when the program runs).

    Example:
        ```python
        gm = sd.toy.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2., 0.], [2., 1.]]),
                                    jnp.stack([jnp.eye(2) * 0.1, jnp.eye(2) * 0.3]))
        x = gm.sample(key, 1000)                 # (1000, 2)
        score = gm.score_fn(sd.VPSDE())          # exact (t, x) -> grad log p_t(x)
        ```
    """

    weights: Float[Array, " k"]
    means: Float[Array, "k d"]
    covs: Float[Array, "k d d"]
    eigvals: Float[Array, "k d"]
    eigvecs: Float[Array, "k d d"]

    def __init__(self, weights: ArrayLike, means: ArrayLike, covs: ArrayLike):
        weights = as_float(weights, "weights")
        means = as_float(means, "means")
        covs = as_float(covs, "covs")
        dtype = jnp.result_type(weights, means, covs)
        weights, means, covs = (a.astype(dtype) for a in (weights, means, covs))
        if weights.ndim != 1:
            raise ValueError(f"`weights` must have shape (k,), got {weights.shape}.")
        k = weights.shape[0]
        if means.ndim != 2 or means.shape[0] != k:
            raise ValueError(f"`means` must have shape (k={k}, d), got {means.shape}.")
        d = means.shape[1]
        if covs.shape != (k, d, d):
            raise ValueError(f"`covs` must have shape (k={k}, d={d}, d={d}), got {covs.shape}.")
        # Checks run in numpy on concrete inputs; traced inputs (a mixture built under jit,
        # vmap or grad) are checked when the program runs, below.
        if is_concrete(means):
            m = np.asarray(means)
            if not np.isfinite(m).all():
                row = int(np.argmax(~np.isfinite(m).all(axis=1)))
                raise ValueError(f"`means` must be finite, got {m[row]} in row {row}.")
        if is_concrete(weights):
            w = np.asarray(weights)
            if (w < 0).any() or not np.isfinite(w).all():
                raise ValueError(f"`weights` must be non-negative and finite, got {w}.")
            if abs(float(w.sum()) - 1.0) > 1e-5:
                raise ValueError(f"`weights` must sum to one, got sum {float(w.sum())}.")
        if is_concrete(covs):
            c = np.asarray(covs, dtype=np.float64)
            asym = float(np.max(np.abs(c - np.swapaxes(c, -1, -2))))
            if not asym <= 1e-6 * max(float(np.max(np.abs(c))), 1.0):
                raise ValueError(f"`covs` must be symmetric, got max |C - C^T| = {asym}.")
            lo = np.linalg.eigvalsh(c).min(axis=-1)
            bad = [i for i, v in enumerate(lo) if not v > 0]
            if bad:
                raise ValueError(
                    f"`covs[{bad[0]}]` must be positive definite, got smallest eigenvalue "
                    f"{lo[bad[0]]}."
                )
        evals, evecs = jnp.linalg.eigh(covs)
        if not is_concrete(weights, means, covs):
            weights, means, covs, evals, evecs = _runtime_checks(weights, means, covs, evals, evecs)
        self.weights, self.means, self.covs = weights, means, covs
        self.eigvals, self.eigvecs = evals, evecs

    @property
    def dim(self) -> int:
        """Dimension $d$ of the data."""
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        """Number of components $k$."""
        return self.means.shape[0]

    # ------------------------------------------------------------------ core linear algebra
    def _spectrum(self, alpha, sigma):
        """Eigenvalues of $\\alpha^2 C_k + \\sigma^2 I$, shape (k, d)."""
        return alpha**2 * self.eigvals + sigma**2

    def _solve(self, spec, r):
        """$S_k^{-1} r_k$ for residuals r of shape (k, d)."""
        coef = jnp.einsum("kji,kj->ki", self.eigvecs, r) / spec
        return jnp.einsum("kij,kj->ki", self.eigvecs, coef)

    def _component_terms(self, x, alpha, sigma):
        alpha = jnp.asarray(alpha, self.means.dtype)
        sigma = jnp.asarray(sigma, self.means.dtype)
        spec = self._spectrum(alpha, sigma)
        resid = x[None, :] - alpha * self.means
        sol = self._solve(spec, resid)
        logn = -0.5 * (
            jnp.sum(resid * sol, -1) + jnp.sum(jnp.log(spec), -1) + self.dim * math.log(2 * math.pi)
        )
        logits = jnp.log(self.weights) + logn
        return logits, sol, spec

    def _check_x(self, x):
        x = as_float(x, "x")
        if x.shape != (self.dim,):
            raise ValueError(f"`x` must have shape (d,) = ({self.dim},), got {x.shape}; use vmap.")
        return x.astype(self.means.dtype) if x.dtype != self.means.dtype else x

    # ------------------------------------------------------------------ densities
    def log_prob(self, x: Float[ArrayLike, " d"]) -> Scalar:
        r"""The log-density
        $\log p(x) = \operatorname{logsumexp}_k\big(\log w_k + \log\mathcal N(x; m_k, C_k)\big)$."""
        x = self._check_x(x)
        logits, _, _ = self._component_terms(x, 1.0, 0.0)
        return logsumexp(logits)

    def score(self, x: Float[ArrayLike, " d"]) -> Float[Array, " d"]:
        r"""$\nabla\log p(x) = -\sum_k r_k(x)\,C_k^{-1}(x - m_k)$, with responsibilities $r_k$."""
        return self.score_at(1.0, 0.0, x)

    def sample(self, key: Key, n: int) -> Float[Array, "n d"]:
        """Draw `n` independent samples, shape `(n, d)`."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"`n` must be a non-negative int, got {n!r}.")
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, jnp.log(self.weights), shape=(n,))
        z = jax.random.normal(kz, (n, self.dim), self.means.dtype)
        scaled = jnp.sqrt(self.eigvals[comp]) * z
        return self.means[comp] + jnp.einsum("nij,nj->ni", self.eigvecs[comp], scaled)

    # ------------------------------------------------------------------ under a diffusion
    def perturbed(self, alpha: ArrayLike, sigma: ArrayLike) -> "GaussianMixture":
        r"""The law of $\alpha x_0 + \sigma\varepsilon$: means $\alpha m_k$, covs
        $\alpha^2 C_k + \sigma^2 I$."""
        alpha = jnp.asarray(alpha, self.means.dtype)
        sigma = jnp.asarray(sigma, self.means.dtype)
        eye = jnp.eye(self.dim, dtype=self.means.dtype)
        # alpha^2 C + sigma^2 I has the eigenvectors of C and eigenvalues alpha^2 l + sigma^2:
        # update the stored spectrum instead of re-diagonalising. This is exact, O(k d^2), and
        # differentiable in (alpha, sigma) even for isotropic components, where the derivative
        # of `eigh` (which divides by eigenvalue gaps) would be NaN.
        return eqx.tree_at(
            lambda g: (g.means, g.covs, g.eigvals),
            self,
            (
                alpha * self.means,
                alpha**2 * self.covs + sigma**2 * eye[None],
                self._spectrum(alpha, sigma),
            ),
        )

    def marginal(self, sde: AbstractLinearSDE, t: Time) -> "GaussianMixture":
        r"""The marginal $p_t$ of the data under `sde` at time `t`, again a mixture."""
        t = check_time(t, sde.T)
        return self.perturbed(*sde.marginal(t))

    def log_prob_at(self, alpha, sigma, x: Float[ArrayLike, " d"]) -> Scalar:
        r"""$\log p(x)$ for $x = \alpha x_0 + \sigma\varepsilon$, without building the mixture."""
        x = self._check_x(x)
        logits, _, _ = self._component_terms(x, alpha, sigma)
        return logsumexp(logits)

    def score_at(self, alpha, sigma, x: Float[ArrayLike, " d"]) -> Float[Array, " d"]:
        r"""Exact score of the law of $\alpha x_0 + \sigma\varepsilon$ at $x$."""
        x = self._check_x(x)
        logits, sol, _ = self._component_terms(x, alpha, sigma)
        r = jax.nn.softmax(logits)
        return -jnp.einsum("k,ki->i", r, sol)

    def eps_at(self, alpha, sigma, x: Float[ArrayLike, " d"]) -> Float[Array, " d"]:
        r"""Exact $\mathbb E[\varepsilon\mid x] = -\sigma\,\nabla\log p(x)$ for
        $x = \alpha x_0 + \sigma\varepsilon$.

        Works for any $(\alpha, \sigma)$, e.g. $(\sqrt{\bar\alpha_n}, \sqrt{1 - \bar\alpha_n})$ of
        a discrete schedule.
        """
        return -jnp.asarray(sigma, self.means.dtype) * self.score_at(alpha, sigma, x)

    def posterior(self, alpha, sigma, x: Float[ArrayLike, " d"]) -> "_PosteriorMixture":
        r"""The exact posterior $p(x_0\mid x_t = x)$ for $x_t = \alpha x_0 + \sigma\varepsilon$.

        Component $k$ has responsibility $r_k(x)$, mean $m_k + \alpha C_k S_k^{-1}(x - \alpha m_k)$
        and covariance $C_k - \alpha^2 C_k S_k^{-1} C_k$, where $S_k = \alpha^2 C_k + \sigma^2 I$.
        """
        x = self._check_x(x)
        logits, sol, spec = self._component_terms(x, alpha, sigma)
        alpha = jnp.asarray(alpha, self.means.dtype)
        r = jax.nn.softmax(logits)
        means = self.means + alpha * jnp.einsum("kij,kj->ki", self.covs, sol)
        # C - a^2 C S^{-1} C = U diag(l - a^2 l^2 / (a^2 l + s^2)) U^T = U diag(l s^2 / spec) U^T
        sigma = jnp.asarray(sigma, self.means.dtype)
        post_eigs = self.eigvals * sigma**2 / spec
        covs = jnp.einsum("kij,kj,klj->kil", self.eigvecs, post_eigs, self.eigvecs)
        return _PosteriorMixture(r, means, covs)

    def posterior_moments(self, alpha, sigma, x: Float[ArrayLike, " d"]):
        r"""$\big(\mathbb E[x_0\mid x],\ \operatorname{Cov}[x_0\mid x]\big)$, exactly."""
        post = self.posterior(alpha, sigma, x)
        mean = jnp.einsum("k,ki->i", post.weights, post.means)
        dev = post.means - mean[None, :]
        cov = jnp.einsum("k,kij->ij", post.weights, post.covs) + jnp.einsum(
            "k,ki,kj->ij", post.weights, dev, dev
        )
        return mean, cov

    def eps_moments(self, alpha, sigma, x: Float[ArrayLike, " d"]):
        r"""The pair $\big(\mathbb E[\varepsilon\mid x],\ \mathbb E[\varepsilon^2\mid x]\big)$
        (elementwise square).

        From $\varepsilon = (x - \alpha x_0)/\sigma$: the conditional mean is
        $(x - \alpha\,\mathbb E[x_0\mid x])/\sigma$ and the conditional second moment is
        $\big((x - \alpha\,\mathbb E[x_0\mid x])^2
        + \alpha^2\operatorname{diag}\operatorname{Cov}[x_0\mid x]\big)/\sigma^2$.
        These are what SN-DPM's and NPR-DPM's second heads learn.
        """
        x = self._check_x(x)
        mean, cov = self.posterior_moments(alpha, sigma, x)
        alpha = jnp.asarray(alpha, x.dtype)
        sigma = jnp.asarray(sigma, x.dtype)
        m1 = (x - alpha * mean) / sigma
        m2 = m1**2 + alpha**2 * jnp.diagonal(cov) / sigma**2
        return m1, m2

    def score_fn(self, sde: AbstractLinearSDE) -> "MixtureScore":
        r"""The exact score $(t, x) \mapsto \nabla_x\log p_t(x)$ under `sde`."""
        return MixtureScore(self, sde, "score")

    def eps_fn(self, sde: AbstractLinearSDE) -> "MixtureScore":
        r"""The exact noise prediction $(t, x) \mapsto -\sigma(t)\nabla_x\log p_t(x)$ under
        `sde`."""
        return MixtureScore(self, sde, "eps")


def _runtime_checks(weights, means, covs, evals, evecs):
    """The constructor's checks for traced parameters, as `equinox.error_if` (one per argument,
    each naming it); the arrays returned carry the checks."""
    w_bad = ~jnp.all((weights >= 0) & jnp.isfinite(weights)) | (
        jnp.abs(jnp.sum(weights) - 1.0) > 1e-5
    )
    weights = runtime_check(weights, w_bad, "`weights` must be non-negative, finite, sum to one.")
    means = runtime_check(means, ~jnp.all(jnp.isfinite(means)), "`means` must be finite.")
    scale = jnp.maximum(jnp.max(jnp.abs(covs)), 1.0)
    asym = jnp.max(jnp.abs(covs - jnp.swapaxes(covs, -1, -2)))
    c_bad = ~(asym <= 1e-6 * scale) | ~jnp.all(evals > 0)  # NaN fails both
    covs, evals, evecs = runtime_check(
        (covs, evals, evecs), c_bad, "`covs` must be symmetric positive definite."
    )
    return weights, means, covs, evals, evecs


class _PosteriorMixture(eqx.Module):
    """Weights, means and covariances of a posterior mixture (not validated: r may be ~0)."""

    weights: Array
    means: Array
    covs: Array


class MixtureScore(eqx.Module):
    """Exact score or eps-prediction `(t, x) -> array` of a Gaussian mixture under a linear SDE."""

    mixture: GaussianMixture
    sde: AbstractLinearSDE
    kind: str = eqx.field(static=True)

    def __call__(self, t: Time, x: Float[Array, " d"]) -> Float[Array, " d"]:
        alpha, sigma = self.sde.marginal(t)
        if self.kind == "eps":
            return self.mixture.eps_at(alpha, sigma, x).astype(x.dtype)
        return self.mixture.score_at(alpha, sigma, x).astype(x.dtype)
