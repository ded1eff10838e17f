"""Tests for the digits demo, `python -m examples.digits` (`make demo`, the README's first command).

The demo is an application in `examples/` at the repository root, not part of the package; it is
imported from there.
"""

import json
import math
import pathlib
import struct
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the repository root, which holds `examples/`

import jax.numpy as jnp  # noqa: E402
from examples.digits import config as _config, data as _data, evaluate as _evaluate  # noqa: E402

import scoredyn as sd  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXTRA_FIGURES = ("guidance.png", "inpainting.png", "flow_vs_diffusion.png")
EXTRA_TABLES = (
    "Class-conditional model: held-out bits/dim",
    "Classifier-free guidance",
    "Inpainting the lower half",
    "Diffusion and flow matching",
)


def _png_size(path):
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    blob = path.read_bytes()
    assert blob[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert blob[12:16] == b"IHDR"
    return struct.unpack(">II", blob[16:24])


def _numbers(obj, path=""):
    """Every number in a JSON tree, with its path."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, int | float):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


# ----------------------------------------------------------------------------- fast unit tests
def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as e:
        _config.parse_config(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--seed" in out and "--data" in out


def test_checkpoint_hash_tracks_training_settings_only():
    a = _config.parse_config([])
    assert (
        a.training_hash()
        == _config.parse_config(["--eval", "7", "--out", "elsewhere"]).training_hash()
    )
    assert a.training_hash() != _config.parse_config(["--seed", "1"]).training_hash()
    assert a.training_hash() != _config.parse_config(["--steps", "10"]).training_hash()
    assert a.training_hash() != _config.parse_config(["--quick"]).training_hash()
    with pytest.raises(SystemExit):
        _config.parse_config(["--data", "moons", "--net", "grid"])


def test_digits_are_on_the_17_level_grid():
    data = _data.load_digits()
    assert data.train.shape == (1500, 64) and data.test.shape == (297, 64)
    k = (data.train + 1.0) * 8.0  # levels 0..16
    np.testing.assert_allclose(k, np.round(k), atol=1e-5)
    assert k.min() == 0 and k.max() == 16 and data.levels == 17
    assert len(np.unique(np.round(k))) == 17
    # the split is fixed (independent of --seed) and train / held-out do not share rows
    again = _data.load_digits()
    np.testing.assert_array_equal(again.test, data.test)


def test_pf_ode_start_matches_the_bin_width():
    r"""$\sigma(t_\epsilon) = \Delta/\sqrt{12}$ with $\Delta = 2/16$ for the digits."""
    sde = sd.VPSDE(beta_min=0.1, beta_max=20.0)
    sched = sd.DiscreteSchedule.from_sde(sde, 1000, dtype=jnp.float32)
    data = _data.load_digits()
    t = _evaluate.pf_ode_start(sde, sched, data)
    assert abs(float(sde.marginal(t)[1]) - 0.125 / math.sqrt(12)) < 1e-6
    # continuous data: the first time the network was trained at, t_1 = T / N
    toy = _data.load_toy("mixture", num_train=10, num_test=10)
    assert _evaluate.pf_ode_start(sde, sched, toy) == 1.0 / 1000


def test_bound_chains_are_the_solvers_chains_with_a_floored_decoder():
    """Each bound row is its solver's chain (same lam2 and variances); only the decoder variance
    is the demo's max(v_1, 1 - abar[tau_1])."""
    sde = sd.VPSDE(beta_min=0.1, beta_max=20.0)
    sched = sd.DiscreteSchedule.from_sde(sde, 1000, dtype=jnp.float32)
    ms_eps = jnp.linspace(0.0, 1.0 - 1e-5, 1001, dtype=jnp.float32)
    tau = sd.grids.even(1000, 10)
    chains = _evaluate._bound_chains(sched, tau, ms_eps, (-1.0, 1.0))
    solvers = _evaluate.bound_solvers(ms_eps, (-1.0, 1.0))
    assert list(solvers) == list(_evaluate.BOUND_NAMES)
    floor = float(sched.one_minus_alpha_bar[1])
    for chain, solver in zip(chains, solvers.values()):
        ref = solver.chain(sched, tau)
        np.testing.assert_array_equal(chain.tau, ref.tau)
        np.testing.assert_allclose(chain.lam2, ref.lam2, rtol=1e-6)
        np.testing.assert_allclose(chain.variances, ref.variances, rtol=1e-6)
        want = max(float(np.asarray(ref.variances)[0]), floor)
        np.testing.assert_allclose(float(chain.decoder_var), want, rtol=1e-6)


def test_cli_values_are_validated_with_the_flag_names():
    for argv, flag in (
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--eval", "0"], "--eval"),
        (["--eval", "1"], "--eval"),
        (["--ode", "0"], "--ode"),
        (["--steps", "0"], "--steps"),
        (["--beta-min", "-0.1"], "--beta-min"),
        (["--name", "../elsewhere"], "--name"),
    ):
        with pytest.raises(SystemExit, match=flag):
            _config.parse_config(argv)


def test_help_shows_real_defaults_only(capsys):
    with pytest.raises(SystemExit):
        _config.parse_config(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: True" not in out  # --no-progress is a switch, not a value
    assert "(default: )" not in out


def test_results_json_is_strict():
    """JSON has no NaN: a missing value is written as null, and strict readers accept the file."""
    from examples.digits.report import strict_json

    tree = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": "x", "e": 2}
    text = json.dumps(strict_json(tree), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": "x", "e": 2}


def test_rerun_never_replaces_earlier_results(tmp_path):
    from examples.digits.main import run_folder

    assert run_folder(tmp_path, "digits", False) == tmp_path / "digits"
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "checkpoint-notes.txt").write_text("")  # not a result
    assert run_folder(tmp_path, "digits", False) == tmp_path / "digits"
    (tmp_path / "digits" / "report.md").write_text("earlier")
    assert run_folder(tmp_path, "digits", False) == tmp_path / "digits-2"
    (tmp_path / "digits-2").mkdir()
    (tmp_path / "digits-2" / "results.json").write_text("{}")
    assert run_folder(tmp_path, "digits", False) == tmp_path / "digits-3"
    assert run_folder(tmp_path, "digits", True) == tmp_path / "digits"


def test_extra_stages_have_their_own_checkpoint_hashes():
    """The conditional and flow models hash their own settings: changing one never touches the
    main network's checkpoint, and toys refuse the digit-only stages."""
    a = _config.parse_config([])
    b = _config.parse_config(["--cond-steps", "10", "--flow-steps", "7", "--inpaint", "0"])
    assert a.training_hash() == b.training_hash()
    for kind in ("conditional", "flow"):
        h = _config.settings_hash(a.stage_settings(kind))
        assert h != a.training_hash()
        assert h != _config.settings_hash(b.stage_settings(kind))
        assert h != _config.settings_hash(
            _config.parse_config(["--seed", "3"]).stage_settings(kind)
        )
    assert a.stage_settings("conditional") != a.stage_settings("flow")
    for flag in ("--cond-steps", "--flow-steps", "--inpaint"):
        with pytest.raises(SystemExit, match=flag):
            _config.parse_config(["--data", "moons", flag, "5"])
        with pytest.raises(SystemExit, match=flag):
            _config.parse_config([flag, "-1"])
    toy = _config.parse_config(["--data", "moons"])
    assert toy.cond_steps == toy.flow_steps == toy.num_inpaint == 0


def test_digits_carry_their_labels():
    data = _data.load_digits()
    assert data.train_labels is not None and data.test_labels is not None
    assert data.train_labels.shape == (1500,) and data.test_labels.shape == (297,)
    assert data.num_classes == 10
    from sklearn.datasets import load_digits

    raw, y = load_digits(return_X_y=True)
    # each held-out row is an sklearn digit with the same label
    k = np.round((data.test[:5] + 1.0) * 8.0)
    for row, label in zip(k, data.test_labels[:5]):
        hits = np.flatnonzero(np.all(raw == row, axis=1))
        assert hits.size and label in y[hits]


def test_frechet_distance_matches_the_closed_form():
    from examples.digits.flow import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert abs(frechet_distance(a, a)) < 1e-9
    # N(0, I) against N(m, s^2 I): |m|^2 + d (1 - s)^2 for the sample moments
    b = 2.0 * rng.normal(size=(4000, 3)) + 1.0
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ea, va = np.linalg.eigh(sa)
    ra = va @ np.diag(np.sqrt(ea)) @ va.T
    cross = np.sqrt(np.linalg.eigvalsh(ra @ sb @ ra)).sum()
    mu = a.mean(0) - b.mean(0)
    want = mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross
    assert abs(frechet_distance(a, b) - want) < 1e-8
    assert abs(frechet_distance(a, b) - 6.0) < 0.3  # |m|^2 = 3, d (1 - s)^2 = 3
    # singular covariances (constant pixels) are fine
    c = np.concatenate([a, np.zeros((4000, 2))], axis=1)
    assert np.isfinite(frechet_distance(c, c + 0.1))


def test_inpainting_helpers():
    from examples.digits import inpaint

    mask = inpaint.lower_half_mask((8, 8))
    assert mask.shape == (64,) and mask[:32].all() and not mask[32:].any()
    x = np.array([[-1.2, -0.96, 0.01, 0.07, 0.999]], np.float32)
    np.testing.assert_allclose(inpaint.to_grid(x, 17), [[-1.0, -1.0, 0.0, 0.125, 1.0]])
    data = _data.load_digits()
    nn = inpaint.nearest_neighbour(data, data.train[:3], mask)
    np.testing.assert_array_equal(nn, data.train[:3])  # its own training row is nearest


def test_matched_t_eps_and_velocity_head():
    """sigma/alpha = bin/sqrt(12) at the likelihood's start on both processes; the grid
    velocity is eps - x0 of the grid head on the rectified flow."""
    import jax
    from examples.digits import flow, likelihood

    for process in (sd.VPSDE(beta_min=0.1, beta_max=20.0), sd.RectifiedFlow()):
        t = likelihood.matched_t_eps(process, 17)
        a, s = process.marginal(t)
        assert abs(float(s / a) - 0.125 / math.sqrt(12)) < 1e-5
    rf = sd.RectifiedFlow()
    logits = sd.nn.MLP(64, width=8, depth=1, out_size=64 * 17, key=jax.random.key(0))
    grid = sd.nn.GridEps(logits, rf, 17)
    vel = flow.GridVelocity(grid, rf)
    x = jax.random.normal(jax.random.key(1), (64,))
    # one compiled program for the three times (eagerly every operation compiles on its own)
    both = jax.jit(lambda t: (vel(t, x), grid(t, x) - grid.x0(t, x)))
    for t in (0.3, 0.9):
        np.testing.assert_allclose(*both(t), rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(np.asarray(both(0.0)[0])))  # t = 0 is a possible loss draw


def test_progress_ticks_follow_repeated_runs():
    from examples.digits.progress import Ticks

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    ticks = Ticks(bar)
    for done in (2, 5, 10, 3, 10):  # a run of 10, then another
        ticks(done, 10)
    assert bar.n == 20


def test_mosaic_keeps_digits_apart():
    from examples.digits.plots import GAP, _mosaic

    img = _mosaic(np.zeros((4, 64)), (8, 8))
    assert GAP >= 2
    assert img.shape == (2 * 8 + 3 * GAP, 2 * 8 + 3 * GAP)
    # a border, and every row and column between two digits, is a gap
    for i in range(GAP):
        for line in (i, GAP + 8 + i):
            assert np.isnan(img[line, :]).all() and np.isnan(img[:, line]).all()


def _small_training(tmp_path, steps):
    # a small network and batch: what is checked (segments, checkpoints, checksums) does not
    # depend on the size, and the cost is the compilation of the training chunk per run
    cfg = _config.parse_config(
        ["--quick", "--steps", str(steps), "--width", "16", "--depth", "1", "--batch-size", "32"]
        + ["--out", str(tmp_path), "--no-progress"]
    )
    data = _data.load_digits()
    sde = sd.VPSDE(beta_min=cfg.beta_min, beta_max=20.0)
    sched = sd.DiscreteSchedule.from_sde(sde, cfg.num_steps, dtype=jnp.float32)
    return cfg, data, sched, sde


def _assert_same_leaves(a, b):
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_interrupted_training_resumes_and_a_corrupted_checkpoint_is_retrained(
    tmp_path, monkeypatch
):
    """Ctrl-C after the first segment keeps its checkpoint; the rerun resumes from it and ends
    with the same weights, bit for bit, as a run that was never interrupted. Then flipping bytes
    of that uninterrupted run's finished checkpoint (same size) fails its checksum: the run says
    so, keeps the bad file aside and trains again to the original weights, and the retrained
    checkpoint is valid again. (One test: the uninterrupted run's checkpoint is the one
    corrupted, so its training is shared.)"""
    import jax
    from examples.digits import checkpoint, train as _train

    steps = _config.SEGMENT + 50
    cfg, data, sched, sde = _small_training(tmp_path / "a", steps)
    key = jax.random.key(0)
    whole, losses, _, _ = _train.train(cfg, data, sched, sde, key, log=lambda m: None)

    # ---- interrupted after the first segment, then resumed
    cfg_b, *_ = _small_training(tmp_path / "b", steps)
    real_save = checkpoint.save

    def save_then_interrupt(path, tree, record):
        real_save(path, tree, record)
        if "partial" in path.name:
            raise KeyboardInterrupt  # the user presses Ctrl-C right after the segment

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        _train.train(cfg_b, data, sched, sde, key, log=logs.append)
    assert any("resume" in m for m in logs)
    monkeypatch.setattr(checkpoint, "save", real_save)
    logs.clear()
    resumed, losses_b, _, reused = _train.train(cfg_b, data, sched, sde, key, log=logs.append)
    assert any(f"at step {_config.SEGMENT}" in m for m in logs), logs
    assert not reused
    np.testing.assert_array_equal(losses_b, losses)
    _assert_same_leaves(whole, resumed)

    # ---- the uninterrupted run's finished checkpoint, corrupted
    final, _ = _train.checkpoint_paths(cfg)
    blob = bytearray(final.read_bytes())
    mid = len(blob) // 2
    blob[mid : mid + 8] = bytes(b ^ 0xFF for b in blob[mid : mid + 8])
    final.write_bytes(bytes(blob))
    logs.clear()
    again, _, _, reused = _train.train(cfg, data, sched, sde, key, log=logs.append)
    assert not reused
    assert any("checksum" in m for m in logs), logs
    assert final.with_name(final.name + ".corrupt").exists()
    _assert_same_leaves(whole, again)
    # and the retrained checkpoint is valid again
    logs.clear()
    _, _, _, reused = _train.train(cfg, data, sched, sde, key, log=logs.append)
    assert reused


# ----------------------------------------------------------------------------- the demo itself
@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    """`--quick` writes every file, all numbers are finite, the PNGs are valid, Analytic-DPM
    beats DDPM (beta-tilde) at K = 10, and a second run re-uses the checkpoint and reproduces
    every number."""
    from examples.digits import main

    # N = 100 schedule steps (K = 10 and 100): the bounds, Gamma and the samplers are the same
    # programs as at N = 1000, with a tenth of the run time. 100 / 50 / 50 training steps are
    # enough for every claim below (at K = 10 Analytic-DPM 3.5 bits/dim, DDPM beta 3.8, DDPM
    # beta-tilde 24; at K = N 2.6 < log2 17 = 4.09; the flow and conditional rows near 2.5).
    args = ["--quick", "--out", str(tmp_path), "--no-progress", "--steps", "100", "--eval", "24"]
    args += ["--cond-steps", "50", "--flow-steps", "50", "--inpaint", "2", "--num-steps", "100"]
    folder = main(args)
    assert folder == tmp_path / "digits-quick"
    for name in (
        "results.json",
        "table.md",
        "report.md",
        "nll_vs_steps.png",
        "samples.png",
        "training_loss.png",
        *EXTRA_FIGURES,
    ):
        assert (folder / name).is_file(), name
    for kind in ("checkpoint", "conditional", "flow"):
        assert list((tmp_path / "checkpoints").glob(f"{kind}-*.eqx")), f"no {kind} checkpoint"
    assert not list((tmp_path / "checkpoints").glob("*.partial.*")), "partial checkpoint left"
    for png in ("nll_vs_steps.png", "samples.png", "training_loss.png", *EXTRA_FIGURES):
        w, h = _png_size(folder / png)
        assert w > 100 and h > 100

    res = json.loads((folder / "results.json").read_text())
    nums = list(_numbers(res))
    assert len(nums) > 100
    bad = [(p, v) for p, v in nums if not math.isfinite(v)]
    assert not bad, bad[:5]
    b = res["bounds_bits_per_dim"]
    assert b["Analytic-DPM"]["10"] < b["DDPM, beta-tilde"]["10"]
    # Analytic-DPM's variance is optimal among isotropic ones: below both DDPM choices at every K
    for k in b["Analytic-DPM"]:
        assert b["Analytic-DPM"][k] < b["DDPM, beta"][k] + 0.05
    # the uniform distribution on the 17 levels is beaten at full N
    assert b["Analytic-DPM"][str(res["ks"][-1])] < math.log2(17)
    assert math.isfinite(res["pf_ode_bits_per_dim"]["mean"])
    table = (folder / "table.md").read_text()
    assert "Analytic-DPM" in table and "inf" in table  # DDIM's bound is infinite
    report = (folder / "report.md").read_text()
    assert "nll_vs_steps.png" in report and "samples.png" in report
    for png in EXTRA_FIGURES:
        assert f"]({png})" in report, png
    printed = capsys.readouterr().out
    assert "K=10" in printed and "PF-ODE" in printed
    for title in EXTRA_TABLES:
        assert title in printed and f"## {title}" in report, title

    # the extra stages: every table's numbers are in results.json, in range
    assert 0.8 < res["classifier_test_accuracy"] <= 1.0
    g = res["guidance"]
    assert g["scales"] == [0.0, 1.0, 2.0, 4.0]
    for w in ("0", "1", "2", "4"):
        assert 0.0 <= g["classifier_accuracy"][w] <= 1.0 and g["diversity"][w] > 0
    c = res["conditional"]
    for row in ("conditional", "null_label"):
        assert 0.0 < c[row]["mean"] < math.log2(17) + 1 and c[row]["n"] == 2
    inp = res["inpainting"]
    assert inp["num_digits"] == 2 and set(inp["mse_lower_half"]) == set(inp["classifier_accuracy"])
    assert len(inp["mse_lower_half"]) == 3 and len(inp["pf_ode_bits_per_dim"]) == 4
    for v in inp["mse_lower_half"].values():
        assert 0.0 <= v < 4.0  # pixels in [-1, 1]
    fm = res["flow_matching"]
    assert set(fm["pf_ode_bits_per_dim"]) == set(fm["pixel_frechet_distance"])
    for name, d in fm["pixel_frechet_distance"].items():
        assert set(d) == set(fm["settings"]) and all(v >= 0 for v in d.values()), name
        assert 0.0 < fm["pf_ode_bits_per_dim"][name]["mean"] < math.log2(17) + 1

    # second run: same settings -> the checkpoint is re-used and the numbers are identical; the
    # first run's results are kept and the second goes to a fresh folder
    first = (folder / "results.json").read_bytes()
    second = main(args)
    assert second == tmp_path / "digits-quick-2"
    assert (folder / "results.json").read_bytes() == first
    printed = capsys.readouterr().out
    assert printed.count("re-using checkpoint") == 3  # diffusion, conditional, flow
    again = json.loads((second / "results.json").read_text())
    assert again["bounds_bits_per_dim"] == res["bounds_bits_per_dim"]
    assert again["pf_ode_bits_per_dim"] == res["pf_ode_bits_per_dim"]
    assert again["training"]["reused"] is True
    assert again["conditional"]["reused"] is True
    assert again["flow_matching"]["training"]["reused"] is True
    for key in ("guidance", "inpainting"):
        assert again[key] == res[key], key
    assert again["flow_matching"]["pf_ode_bits_per_dim"] == fm["pf_ode_bits_per_dim"]
