"""Coming from diffusers, k-diffusion and score_sde (docs/migration.md).

(a) sd.from_diffusers_config against diffusers 0.32.2, read from tests/fixtures/
    diffusers_config.{npz,json} (written by tests/fixtures/make_diffusers_config.py with the
    scheduler modules in float64): the timesteps exactly, alphas_cumprod to float64 rounding,
    where diffusers' DDIM and DPM-Solver steps land, for every spacing, steps_offset 0 and 1,
    every beta schedule and trained betas;
(b) the keys: defaults, ignored keys, sampler settings, named errors;
(c) the model hint and the network time, and a DDIM sample against the DDIM update written
    here in NumPy from the fixture's alphas_cumprod;
(d) a network written as f(x, t) is caught at trace time, naming the fix;
(e) `dt0`: either sign gives the same ODE solve; zero is refused.
"""

import json
import os

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import no_runtime_typecheck

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NPZ = os.path.join(FIXTURES, "diffusers_config.npz")
JSON = os.path.join(FIXTURES, "diffusers_config.json")
# measured: 1.2e-15 absolute, 1.8e-13 relative (the cosine schedule's tail, where diffusers'
# 1 - f(t + 1/N)/f(t) cancels); everything else below 5e-15 relative
AC_ATOL, AC_RTOL = 4e-15, 1e-12

CASES = []
if os.path.exists(JSON):
    with open(JSON) as _f:
        CASES = sorted(json.load(_f)["cases"])


@pytest.fixture(scope="module")
def ref():
    if not (os.path.exists(NPZ) and os.path.exists(JSON)):
        pytest.skip("tests/fixtures/diffusers_config.npz is missing (make_diffusers_config.py)")
    with open(JSON) as f:
        meta = json.load(f)
    return meta, dict(np.load(NPZ))


@pytest.fixture(scope="module")
def loaded(ref):
    """Every case of the fixture, read by the loader once."""
    meta, _ = ref
    return {
        name: sd.from_diffusers_config(
            c["config"], c["num_inference_steps"], scheduler=c["scheduler"]
        )
        for name, c in meta["cases"].items()
    }


# ----------------------------------------------------------------- (a) against diffusers
@pytest.mark.parametrize("name", CASES)
def test_timesteps_and_schedule_match_diffusers(ref, loaded, name):
    meta, a = ref
    case = meta["cases"][name]
    cfg = loaded[name]
    N = case["config"].get("num_train_timesteps", 1000)
    ts = a[f"{name}__timesteps"]
    np.testing.assert_array_equal(np.asarray(cfg.timesteps), ts)
    assert case["native_timesteps_equal"]  # diffusers' float32 run gives the same list
    # the mapping: diffusers' timestep k is scoredyn's index n = k + 1
    grid = np.asarray(cfg.grid)
    assert grid[0] == 0 and grid.dtype == np.int32
    np.testing.assert_array_equal(grid[1:][::-1] - 1, ts)
    ac = a[f"{case['schedule']}__alphas_cumprod"]
    ab = np.asarray(cfg.schedule.alpha_bar)
    assert cfg.schedule.num_steps == N == ac.shape[0] and ab[0] == 1.0
    np.testing.assert_allclose(ab[1:], ac, rtol=AC_RTOL, atol=0)
    assert np.abs(ab[1:] - ac).max() <= AC_ATOL


@pytest.mark.parametrize(
    "name", ["ddim_leading_off1_k30", "dpm_leading_off0_k10", "ddpm_defaults_k50"]
)
def test_process_and_network_time(ref, loaded, name):
    """What sd.sample runs on: the schedule up to the grid's last node (leading spacing ends
    below N), with the network times t_n = n/N of the full schedule; cfg.timestep inverts them."""
    _, a = ref
    cfg = loaded[name]
    grid, N = np.asarray(cfg.grid), cfg.num_train_timesteps
    proc = cfg.process
    assert proc.num_steps == grid[-1] < N
    ab = np.asarray(cfg.schedule.alpha_bar)
    np.testing.assert_array_equal(np.asarray(proc.alpha_bar), ab[: grid[-1] + 1])
    np.testing.assert_allclose(np.asarray(proc.times), np.arange(grid[-1] + 1) / N, rtol=1e-15)
    ts = a[f"{name}__timesteps"]
    np.testing.assert_array_equal(np.asarray(cfg.timestep(proc.time(cfg.grid[1:]))), ts[::-1])
    full = sd.from_diffusers_config({"timestep_spacing": "trailing"}, 10, scheduler="DDIMScheduler")
    assert full.process is full.schedule


def _ddim_cases():
    return [n for n in CASES if n.startswith("ddim_")]


@pytest.mark.parametrize("name", _ddim_cases())
def test_where_diffusers_ddim_lands(ref, loaded, name):
    """diffusers' DDIM steps from timestep k to k - N // K (or to the final alpha), measured in
    the fixture. That is the next node of the grid exactly when the list has that stride:
    leading spacing, and trailing when K divides N; never for linspace."""
    meta, a = ref
    case = meta["cases"][name]
    cfg = loaded[name]
    ab = np.asarray(cfg.schedule.alpha_bar)
    landed = a[f"{name}__ddim_prev_alpha_bar"]
    ts = np.asarray(cfg.timesteps)
    N, K = cfg.num_train_timesteps, ts.shape[0]
    nodes = np.asarray(cfg.grid)[::-1][1:].copy()  # the next node after each step
    nodes[-1] = cfg.final_index
    same = np.abs(landed - ab[nodes]) <= 1e-14
    strided = np.append(ts[1:] == ts[:-1] - N // K, True)
    np.testing.assert_array_equal(same, strided)
    spacing = case["config"].get("timestep_spacing", "leading")
    if spacing == "leading" or (spacing == "trailing" and N % K == 0):
        assert same.all()
    if spacing == "linspace":
        assert same.sum() == 1  # only the last step
    expect_final = 1 if case["config"].get("set_alpha_to_one", True) is False else 0
    assert cfg.final_index == expect_final


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("dpm_")])
def test_dpm_solver_sigmas_and_final_step(ref, loaded, name):
    _, a = ref
    cfg = loaded[name]
    sig = a[f"{name}__sigmas"]
    ab = np.asarray(cfg.schedule.alpha_bar)
    s = np.sqrt((1.0 - ab) / ab)  # diffusers' sigma at index n
    nodes = np.asarray(cfg.grid)[::-1][:-1]
    np.testing.assert_allclose(sig[:-1], s[nodes], rtol=1e-12)
    np.testing.assert_allclose(sig[-1], s[cfg.final_index], rtol=1e-12)


# ------------------------------------------------------------------------- (b) the keys
def test_defaults_follow_the_scheduler():
    ddim = sd.from_diffusers_config({"_class_name": "DDIMScheduler"}, 10)
    assert ddim.clip == (-1.0, 1.0)  # clip_sample=True by default
    np.testing.assert_array_equal(ddim.grid, sd.grids.leading(1000, 10))
    assert ddim.prediction_type == "epsilon" and ddim.final_index == 0
    dpm = sd.from_diffusers_config({"_class_name": "DPMSolverMultistepScheduler"}, 10)
    assert dpm.clip is None and dpm.grid[-1] == 1000 and dpm.grid[1] == 101
    ddpm = sd.from_diffusers_config({"clip_sample_range": 2.0}, 5, scheduler="DDPMScheduler")
    assert ddpm.clip == (-2.0, 2.0) and not ddpm.large_variance
    # trailing and linspace are sd.grids' rules
    for spacing, rule in (("trailing", sd.grids.trailing), ("linspace", sd.grids.linspace)):
        c = sd.from_diffusers_config({"timestep_spacing": spacing}, 30, scheduler="DDIMScheduler")
        np.testing.assert_array_equal(c.grid, rule(1000, 30))


def test_stable_diffusion_config():
    """Stable Diffusion 1.x's scheduler_config.json, read as DDIMScheduler.from_config reads it."""
    config = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    }
    with pytest.raises(ValueError, match="`_class_name`.*PNDMScheduler.*scheduler="):
        sd.from_diffusers_config(config, 50)
    cfg = sd.from_diffusers_config(config, 50, scheduler="DDIMScheduler")
    assert cfg.timesteps[0] == 981 and cfg.timesteps[-1] == 1
    assert cfg.clip is None and cfg.final_index == 1
    assert cfg.solver_options == (("skip_prk_steps", True),)
    assert cfg.process.num_steps == 982 and cfg.schedule.num_steps == 1000


def test_sampler_settings_are_returned_not_translated():
    config = {"solver_order": 3, "algorithm_type": "dpmsolver++", "lower_order_final": True}
    cfg = sd.from_diffusers_config(config, 10, scheduler="DPMSolverMultistepScheduler")
    assert dict(cfg.solver_options) == config
    thr = sd.from_diffusers_config({"thresholding": True}, 10, scheduler="DDIMScheduler")
    assert thr.clip == (-1.0, 1.0)  # sample_max_value = 1: the threshold is clipping
    big = sd.from_diffusers_config({"variance_type": "fixed_large"}, 10, scheduler="DDPMScheduler")
    assert big.large_variance
    neutral = {"use_karras_sigmas": False, "timestep_type": "discrete", "sigma_min": None}
    sd.from_diffusers_config(neutral, 10, scheduler="DDIMScheduler")


@pytest.mark.parametrize(
    "config, match",
    [
        ({"beta_schedul": "linear"}, "`beta_schedul`"),
        ({"use_karras_sigmas": True}, "`use_karras_sigmas`"),
        ({"rescale_betas_zero_snr": True}, "`rescale_betas_zero_snr`"),
        ({"beta_schedule": "sigmoid"}, "`beta_schedule`.*sigmoid"),
        ({"prediction_type": "flow_prediction"}, "`prediction_type`"),
        ({"timestep_spacing": "uniform"}, "`timestep_spacing`"),
        ({"trained_betas": [0.1, 0.2]}, "`trained_betas`"),
        ({"thresholding": True, "sample_max_value": 1.5}, "`sample_max_value`"),
        ({"variance_type": "learned_range"}, "`variance_type`"),
        ({"num_train_timesteps": 20}, "`num_inference_steps`"),
        ({"timestep_spacing": "trailing", "num_train_timesteps": 1000, "_k": 61}, "61"),
    ],
)
def test_named_errors(config, match):
    K = config.pop("_k", 30)
    scheduler = "DDPMScheduler" if "variance_type" in config else "DDIMScheduler"
    with pytest.raises(ValueError, match=match):
        sd.from_diffusers_config(config, K, scheduler=scheduler)


def test_bad_arguments():
    with no_runtime_typecheck():
        with pytest.raises(TypeError, match="`config`"):
            sd.from_diffusers_config([("beta_start", 0.1)], 10)  # pyright: ignore[reportArgumentType]
        with pytest.raises(TypeError, match="`num_inference_steps`"):
            sd.from_diffusers_config({}, 10.0, scheduler="DDIMScheduler")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`scheduler`"):
        sd.from_diffusers_config({}, 10, scheduler="EulerDiscreteScheduler")
    with pytest.raises(TypeError, match="`clip_sample`"):
        sd.from_diffusers_config({"clip_sample": "yes"}, 10, scheduler="DDIMScheduler")


# ------------------------------------------------------------- (c) model hint and sampling
def test_model_hint():
    net = lambda t, x: 0.1 * x
    for kind, cls in (
        ("epsilon", sd.EpsModel),
        ("v_prediction", sd.VModel),
        ("sample", sd.X0Model),
    ):
        cfg = sd.from_diffusers_config(
            {"prediction_type": kind, "clip_sample": False}, 10, scheduler="DDIMScheduler"
        )
        assert type(cfg.model(net)) is cls
    clipped = sd.from_diffusers_config({}, 10, scheduler="DDIMScheduler").model(net)
    assert isinstance(clipped, sd.ClipX0) and (clipped.lo, clipped.hi) == (-1.0, 1.0)


def test_ddim_sample_matches_the_ddim_update(ref):
    """Stable Diffusion's schedule with leading spacing and steps_offset 1 (the grid ends at 982,
    below N): `sd.sample` on the loaded values against DDIM's update (Song et al. Eq. 12)
    written here in NumPy on the fixture's alphas_cumprod, with diffusers' indexing: the
    network gets timestep k, the step goes from alphas_cumprod[k] to alphas_cumprod[k - N//K]
    (1 past the end). The network is the exact eps of N(0, c^2 I) data."""
    meta, a = ref
    name = "ddim_sd_leading_off1_k50"
    config = {**meta["cases"][name]["config"], "set_alpha_to_one": True}
    cfg = sd.from_diffusers_config(config, 50, scheduler="DDIMScheduler")
    ac = a[f"{meta['cases'][name]['schedule']}__alphas_cumprod"]
    c2 = 0.3
    x_T = np.array([0.8, -1.3, 0.4])

    def unet_np(x, k):  # diffusers' order and indexing
        return np.sqrt(1.0 - ac[k]) * x / (ac[k] * c2 + 1.0 - ac[k])

    x = x_T.copy()
    ts = a[f"{name}__timesteps"]
    for k in ts:
        eps = unet_np(x, k)
        x0 = (x - np.sqrt(1.0 - ac[k]) * eps) / np.sqrt(ac[k])
        prev = k - 1000 // 50
        a_prev = ac[prev] if prev >= 0 else 1.0
        x = np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps

    alphas_cumprod = cfg.schedule.alpha_bar[1:]

    def unet(x, k):
        a_k = alphas_cumprod[k]
        return jnp.sqrt(1.0 - a_k) * x / (a_k * c2 + 1.0 - a_k)

    model = cfg.model(lambda t, x: unet(x, cfg.timestep(t)))
    res = jax.jit(lambda x: sd.sample(None, cfg.process, model, sd.DDIM(), cfg.grid, x))(x_T)
    np.testing.assert_allclose(res.x, x, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- (d) swapped arguments
def score_x_t(x, t):
    """A network in score_sde's order, score(x, t), that reduces over t (a sum, as a time
    embedding would): swapped, it returns the shape of its first argument."""
    return -x / (1.0 + jnp.sum(t))


def mlp_x_t(x, t):
    """A network in (x, t) order that concatenates its inputs: it fails when swapped."""
    h = jnp.concatenate([x, jnp.reshape(t, (1,))])
    return jnp.tanh(h[:-1])


def test_swapped_network_output_is_caught():
    sde = sd.VPSDE()
    x = jnp.array([0.3, -0.2])
    for cls in (sd.EpsModel, sd.ScoreModel, sd.X0Model, sd.VModel):
        model = cls(score_x_t)  # called as score_x_t(t, x): returns t's shape, ()
        with pytest.raises(ValueError, match=r"lambda t, x: f\(x, t\)") as info:
            jax.eval_shape(lambda x: model.eps(sde, 0.5, x), x)
        assert isinstance(info.value, TypeError)  # what check_model_output raised before
        assert "shape of its first argument" in str(info.value) and cls.__name__ in str(info.value)
        ok = cls(lambda t, x: score_x_t(x, t))
        assert jax.eval_shape(lambda x: ok.eps(sde, 0.5, x), x).shape == (2,)
    with pytest.raises(ValueError, match="shaped like x"):
        sd.sample(None, sde, sd.ScoreModel(score_x_t), sd.EDMHeun(), jnp.array([1.0, 0.1]), x)


def test_swapped_network_error_gets_a_note():
    model = sd.EpsModel(mlp_x_t)
    x = jnp.array([0.3, -0.2])
    with no_runtime_typecheck(), pytest.raises(Exception) as info:
        jax.eval_shape(lambda x: model.eps(sd.VPSDE(), 0.5, x), x)
    assert "lambda t, x: f(x, t)" in "".join(getattr(info.value, "__notes__", []))
    good = sd.EpsModel(lambda t, x: mlp_x_t(x, t))
    assert jax.eval_shape(lambda x: good.eps(sd.VPSDE(), 0.5, x), x).shape == (2,)


def test_shape_check_costs_nothing_at_run_time():
    """The check is on shapes at trace time: the traced program is the network's own."""
    net = lambda t, x: jnp.sin(t) * x
    model = sd.EpsModel(net)
    x = jnp.array([0.3, -0.2])
    t = jnp.asarray(0.5)
    got = jax.make_jaxpr(lambda t, x: model.eps_at(1.0, 1.0, t, x))(t, x)
    want = jax.make_jaxpr(net)(t, x)
    assert str(got) == str(want)


# ------------------------------------------------------------------------------ (e) dt0
def test_dt0_sign_follows_the_grid():
    sde = sd.VPSDE()
    model = sd.ScoreModel(lambda t, x: -2.0 * x)  # data N(0, I/2)-like: a non-zero flow
    grid = jnp.array([1.0, 1e-3])
    x_T = jnp.array([0.7, -1.1])
    out = []
    for dt0 in (0.125, -0.125):
        ode = sd.ODE(diffrax.Euler(), diffrax.ConstantStepSize(), dt0=dt0)
        out.append(sd.sample(None, sde, model, ode, grid, x_T))
    np.testing.assert_array_equal(out[0].x, out[1].x)
    assert int(out[0].stats["num_steps"]) == 8
    assert not np.allclose(out[0].x, x_T)
    for bad in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`dt0`"):
            sd.ODE(diffrax.Euler(), diffrax.ConstantStepSize(), dt0=bad)
    with pytest.raises(TypeError, match="dt0"):
        sd.DiffraxSDE(dt0=0.01)  # pyright: ignore[reportCallIssue]
