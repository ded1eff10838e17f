"""Sampling and likelihood sharded over 8 simulated CPU devices equal the unsharded result."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import scoredyn as sd

SCRIPT = textwrap.dedent(
    """
    import os, sys
    # the suite's compile settings (conftest.py) plus eight host devices
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )
    import jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, {tests!r})
    import scoredyn as sd
    from helpers import mixture_2d

    assert jax.device_count() == 8, jax.device_count()
    gm = mixture_2d()
    sde = sd.VPSDE()
    score = gm.score_fn(sde)
    keys = jax.random.split(jax.random.key(0), 20)          # 20 is not a multiple of 8: padding
    draw = lambda k: sd.sample_ode(k, sde, score, (2,))
    sharded = sd.sharded_vmap(draw)(keys)
    plain = jax.jit(jax.vmap(draw))(keys)
    assert sharded.shape == (20, 2)
    err = float(jnp.max(jnp.abs(sharded - plain)))
    assert err <= 1e-10, err

    xs = gm.sample(jax.random.key(1), 12)
    lik = lambda x: sd.log_likelihood(sde, score, x)
    lp_sharded = sd.sharded_vmap(lik)(xs)
    lp_plain = jax.jit(jax.vmap(lik))(xs)
    err_lp = float(jnp.max(jnp.abs(lp_sharded - lp_plain)))
    assert err_lp <= 1e-10, err_lp

    # broadcast (in_axes=None) arguments
    f = lambda x, c: x * c
    out = sd.sharded_vmap(f, in_axes=(0, None))(jnp.arange(10.0), 3.0)
    assert jnp.allclose(out, 3.0 * jnp.arange(10.0))
    print("OK", err, err_lp)
    """
)


@pytest.mark.slow
def test_sharded_equals_unsharded_on_8_devices():
    tests = os.path.dirname(__file__)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=tests)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("OK"), proc.stdout


def test_sharded_vmap_single_device_and_errors():
    out = sd.sharded_vmap(lambda x: 2 * x)(jnp.arange(5.0))
    assert jnp.allclose(out, 2 * jnp.arange(5.0))
    with pytest.raises(ValueError, match="axis_name"):
        sd.sharded_vmap(lambda x: x, mesh=sd.batch_mesh("data"), axis_name="batch")
    with pytest.raises(ValueError, match="leading size"):
        sd.sharded_vmap(lambda x, y: x + y)(jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="in_axes"):
        sd.sharded_vmap(lambda x: x, in_axes=(1,))(jnp.ones((2, 2)))
    assert len(jax.devices()) >= 1
