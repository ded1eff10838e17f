r"""Print the quadrature-error table of the perturb-and-argmax derivation page.

Run `python -m examples.perturb_max_error_table` from the repository root (needs scipy, in the
`demo` extra, for the Gaussian, logistic and Laplace references; the Gumbel reference is the exact
softmax). The error of a rule is $\max_i |p_i - p_i^{\text{ref}}|$ over the probabilities that
`noise.argmax_probs(mu, method=..., num_nodes=...)` returns (normalised rows), for the blog's
example scores `mu = (0.3, -1.2, 2.0, 0.5)` with unit-scale noise. It uses the public API only
(`import scoredyn as sd`).
"""

import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

MU = (0.3, -1.2, 2.0, 0.5)


def scipy_reference(family: str, mu) -> np.ndarray:
    r"""$p_i$ by adaptive scipy quadrature of the defining integral (independent code)."""
    from scipy import integrate, stats

    dist = {"gaussian": stats.norm, "logistic": stats.logistic, "laplace": stats.laplace}[family]
    mu = np.asarray(mu, float)
    out = []
    for i in range(mu.size):
        d = mu[i] - np.delete(mu, i)
        pts = sorted({0.0, *(-d).tolist()}) if family == "laplace" else [0.0]

        def f(e, d=d):
            return dist.pdf(e) * np.prod(dist.cdf(e + d))

        lo, hi = min(pts) - 60.0, max(pts) + 60.0
        val = integrate.quad(f, lo, hi, points=pts, epsabs=0.0, epsrel=1e-13, limit=2000)[0]
        out.append(val)
    return np.asarray(out)


def error_table(
    node_counts=(8, 16, 24, 32, 48, 64, 96),
    midpoint_counts=(100, 1000, 20000),
    dtype=jnp.float64,
):
    """Rows `(family, rule, nodes per panel, nodes per class, max abs error)`.

    Needs `jax_enable_x64` for `dtype=jnp.float64`.
    """
    mu = jnp.asarray(MU, dtype)
    fams = {
        "gumbel": sd.reparam.Gumbel(),
        "gaussian": sd.reparam.Gaussian(),
        "logistic": sd.reparam.Logistic(),
        "laplace": sd.reparam.Laplace(),
    }
    refs = {"gumbel": np.asarray(jax.nn.softmax(jnp.asarray(MU, jnp.float64)), np.float64)}
    for name in ("gaussian", "logistic", "laplace"):
        refs[name] = scipy_reference(name, MU)

    def error(noise, name, method, num_nodes):
        p = noise.argmax_probs(mu, method=method, num_nodes=num_nodes)
        return float(np.max(np.abs(np.asarray(p, np.float64) - refs[name])))

    rows = []
    for name, noise in fams.items():
        panels = 1 + mu.shape[0] * int(noise.kinks(dtype).shape[0])  # split at every kink
        for m in node_counts:
            if panels > 1 and m > 48:
                continue
            rows.append((name, "sinh-GL", m, m * panels, error(noise, name, "quadrature", m)))
        for k in midpoint_counts:
            rows.append((name, "midpoint", k, k, error(noise, name, "midpoint", k)))
    return rows


def main() -> None:
    jax.config.update("jax_enable_x64", True)  # float64 rows; only when run as a script
    for dtype, counts, mids in [
        (jnp.float64, (8, 16, 24, 32, 48, 64, 96), (100, 1000, 20000)),
        (jnp.float32, (8, 16, 24, 32), (20000,)),
    ]:
        print(f"\n{jnp.dtype(dtype).name}: mu = {MU}, unit-scale noise, normalised probabilities")
        print(f"{'noise':<10} {'rule':<9} {'nodes/panel':>11} {'nodes/class':>11}  max|p - p_ref|")
        for name, rule, m, tot, err in error_table(counts, mids, dtype):
            print(f"{name:<10} {rule:<9} {m:>11} {tot:>11}  {err:.1e}")


if __name__ == "__main__":
    main()
