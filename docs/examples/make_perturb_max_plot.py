"""Draw `docs/examples/perturb-max-maps.png`: the perturb-and-argmax maps of five noise families.

Run from the repository root: `python docs/examples/make_perturb_max_plot.py` (needs matplotlib).
Scores mu = (mu_1, 0, -1); every noise is scaled to unit variance so that the maps differ only
in the *shape* of the noise.
"""

import math
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import scoredyn as sd  # noqa: E402

R = sd.reparam
# scales giving unit variance: Gumbel pi^2 s^2 / 6, logistic pi^2 s^2 / 3, Laplace 2 s^2,
# uniform s^2 / 12
FAMILIES = {
    "Gaussian": R.Gaussian(1.0),
    "Gumbel (softmax)": R.Gumbel(math.sqrt(6.0) / math.pi),
    "logistic": R.Logistic(math.sqrt(3.0) / math.pi),
    "Laplace": R.Laplace(1.0 / math.sqrt(2.0)),
    "uniform": R.Uniform(math.sqrt(12.0)),
}


def main(out: pathlib.Path) -> None:
    mu1 = jnp.linspace(-9.0, 4.0, 521)
    mu = jnp.stack([mu1, jnp.zeros_like(mu1), -jnp.ones_like(mu1)], axis=-1)  # (521, 3)
    log_p = {name: R.PerturbMax(mu, noise).log_probs[:, 0] for name, noise in FAMILIES.items()}
    softmax = jnp.exp(log_p["Gumbel (softmax)"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    ax_p, ax_d, ax_log = axes
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]
    for (name, lp), style in zip(log_p.items(), styles):
        ax_p.plot(mu1, jnp.exp(lp), linestyle=style, label=name, lw=1.8)
        ax_d.plot(mu1, jnp.exp(lp) - softmax, linestyle=style, label=name, lw=1.8)
        ax_log.plot(mu1, lp / math.log(10.0), linestyle=style, label=name, lw=1.8)
    ax_p.set(
        xlim=(-4, 4), xlabel=r"$\mu_1$", ylabel=r"$p_1$", title=r"$p_1$ for $\mu = (\mu_1, 0, -1)$"
    )
    ax_d.set(
        xlim=(-4, 4),
        xlabel=r"$\mu_1$",
        ylabel=r"$p_1 - \mathrm{softmax}_1$",
        title="difference from the softmax (Gumbel)",
    )
    ax_log.set(
        xlim=(-9, 1),
        ylim=(-12, 0.2),
        xlabel=r"$\mu_1$",
        ylabel=r"$\log_{10} p_1$",
        title="left tail: how fast a losing class vanishes",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    ax_p.legend(loc="upper left", fontsize=9, title="unit-variance noise", title_fontsize=9)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(pathlib.Path(__file__).with_name("perturb-max-maps.png"))
