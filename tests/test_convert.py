"""Converters between score, eps, x0 and v predictions, against the exact oracle."""

from typing import Literal

import chex
import jax
import jax.numpy as jnp
import pytest

import scoredyn as sd
from helpers import ALL_LINEAR_SDES, SDE_IDS, mixture_2d, no_runtime_typecheck

KINDS: list[Literal["score", "eps", "x0", "v"]] = ["score", "eps", "x0", "v"]


def _truth(gm, sde, t, x, kind):
    """Each parameterisation from its own definition: Tweedie's x0, eps = (x - a x0)/s,
    v = a eps - s x0."""
    alpha, sigma = sde.marginal(t)
    x0, _ = gm.posterior_moments(alpha, sigma, x)
    eps = (x - alpha * x0) / sigma
    return dict(score=gm.score_fn(sde)(t, x), eps=eps, x0=x0, v=alpha * eps - sigma * x0)[kind]


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_convert_matches_definitions(sde):
    """All 16 (source, target) pairs at three times, each against its own definition."""
    gm = mixture_2d()
    x = jnp.array([0.3, -0.8])
    for u in (0.05, 0.5, 0.95):
        t = u * sde.T
        truth = {k: _truth(gm, sde, t, x, k) for k in KINDS}
        for source in KINDS:
            fn = lambda tt, xx, source=source: _truth(gm, sde, tt, xx, source)
            for target in KINDS:
                out = sd.convert(sde, fn, source, target)(t, x)
                chex.assert_trees_all_close(out, truth[target], rtol=1e-7, atol=1e-9)


def test_named_converters_and_transforms():
    sde, gm = sd.VPSDE(), mixture_2d()
    eps_fn = gm.eps_fn(sde)
    score = sd.eps_to_score(sde, eps_fn)
    back = sd.score_to_eps(sde, score)
    x = jnp.ones((3, 2)) * 0.2
    chex.assert_trees_all_close(
        jax.vmap(back, (None, 0))(0.4, x), jax.vmap(eps_fn, (None, 0))(0.4, x)
    )
    x0_fn = sd.convert(sde, eps_fn, "eps", "x0")
    v_fn = sd.convert(sde, eps_fn, "eps", "v")
    chex.assert_trees_all_close(sd.x0_to_eps(sde, x0_fn)(0.4, x[0]), eps_fn(0.4, x[0]))
    chex.assert_trees_all_close(sd.v_to_eps(sde, v_fn)(0.4, x[0]), eps_fn(0.4, x[0]))
    g = jax.jit(jax.grad(lambda y: jnp.sum(score(0.4, y))))(x[0])
    chex.assert_tree_all_finite(g)


def test_bad_kind_raises():
    with no_runtime_typecheck():  # ill-typed on purpose: scoredyn's own errors
        with pytest.raises(ValueError, match="source"):
            sd.convert(sd.VPSDE(), lambda t, x: x, "noise", "eps")  # pyright: ignore[reportArgumentType]
        with pytest.raises(TypeError, match="sde"):
            sd.convert("vp", lambda t, x: x, "eps", "score")  # pyright: ignore[reportArgumentType]
