"""Print the quadrature-error table of the derivation page.

Run `python -m scoredyn.reparam._error_table` (needs scipy for the Gaussian, logistic and
Laplace references; the Gumbel reference is the exact softmax). The error of a rule is
`max_i |p_i - p_i^ref|` over the *unnormalised* quadrature values (normalising the row hides
errors that are the same for every class), for the blog's example scores
`mu = (0.3, -1.2, 2.0, 0.5)` with unit-scale noise, in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np

MU = (0.3, -1.2, 2.0, 0.5)


def scipy_reference(family: str, mu) -> np.ndarray:
    """$p_i$ by adaptive scipy quadrature of the defining integral (independent code)."""
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
    import scoredyn as sd
    from scoredyn.reparam import _quadrature as quad

    if True:
        mu = jnp.asarray(MU, dtype)
        fams = {
            "gumbel": sd.reparam.Gumbel(),
            "gaussian": sd.reparam.Gaussian(),
            "logistic": sd.reparam.Logistic(),
            "laplace": sd.reparam.Laplace(),
        }
        refs = {"gumbel": np.asarray(jax.nn.softmax(mu))}
        for name in ("gaussian", "logistic", "laplace"):
            refs[name] = scipy_reference(name, MU)
        rows = []
        for name, noise in fams.items():
            panels = 1 + mu.shape[0] * int(noise.kinks(dtype).shape[0])
            for m in node_counts:
                if panels > 1 and m > 48:
                    continue
                raw = jax.jit(lambda x, m=m, noise=noise: noise._quadrature_row(x, m))(mu)
                p = np.exp(np.asarray(raw, np.float64))
                err = float(np.max(np.abs(p - refs[name])))
                rows.append((name, "sinh-GL", m, m * panels, err))
            for k in midpoint_counts:
                raw = jax.jit(
                    lambda x, k=k, noise=noise: quad.midpoint_log_integrals(
                        noise.log_cdf, noise.quantile, x, k
                    )
                )(mu)
                p = np.exp(np.asarray(raw, np.float64))
                rows.append((name, "midpoint", k, k, float(np.max(np.abs(p - refs[name])))))
    return rows


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    for dtype, counts, mids in [
        (jnp.float64, (8, 16, 24, 32, 48, 64, 96), (100, 1000, 20000)),
        (jnp.float32, (8, 16, 24, 32), (20000,)),
    ]:
        print(f"\n{jnp.dtype(dtype).name}: mu = {MU}, unit-scale noise, unnormalised values")
        print(f"{'noise':<10} {'rule':<9} {'nodes/panel':>11} {'nodes/class':>11}  max|p - p_ref|")
        for name, rule, m, tot, err in error_table(counts, mids, dtype):
            print(f"{name:<10} {rule:<9} {m:>11} {tot:>11}  {err:.1e}")


if __name__ == "__main__":
    main()
