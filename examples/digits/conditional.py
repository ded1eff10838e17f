r"""The class-conditional model: label dropout, classifier-free guidance, and what guidance does.

One network $\hat\varepsilon(t, x, c)$ is trained on (digit, label) pairs with the label replaced
by the null label $c = \varnothing$ (index 10) with probability `label_dropout`, so it is both
the conditional and the unconditional model (Ho & Salimans 2022). The library's
`sd.ClassifierFreeGuidance(sd.EpsModel(net), w, null=10)` mixes the two,
$\hat\varepsilon_w = \hat\varepsilon(x, \varnothing) + w(\hat\varepsilon(x, c) -
\hat\varepsilon(x, \varnothing))$, and every solver runs it with `cond=(label,)`.

The label enters the network as a learned embedding added to the first hidden layer: the
one-hot label is appended to the network's input (`sd.nn.MLP`, whose first layer is linear),
which is the same thing. The library's networks take `(t, x)` only, so this wrapper lives here.
"""

import dataclasses
import math
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from . import likelihood
from .config import Config, settings_hash
from .data import Dataset
from .progress import progress_bar
from .train import build_optimiser, train_checkpointed


class LabelledNet(eqx.Module):
    """`net(t, [x, one_hot(label)])`: an `sd.nn.MLP` that also sees a label (the last index,
    `num_labels - 1`, is the null label of label dropout)."""

    mlp: sd.nn.MLP
    num_labels: int = eqx.field(static=True)

    def __call__(self, t, x, label):
        onehot = jax.nn.one_hot(label, self.num_labels, dtype=x.dtype)
        return self.mlp(t, jnp.concatenate([x, onehot]))


class LabelledGridEps(eqx.Module):
    """The grid head `sd.nn.GridEps` on the level logits of a `LabelledNet`: eps(t, x, label)."""

    logits: LabelledNet
    sde: sd.AbstractLinearSDE
    levels: int = eqx.field(static=True)

    def __call__(self, t, x, label):
        logits = lambda t, x: self.logits(t, x, label)
        return sd.nn.GridEps(logits, self.sde, self.levels)(t, x)


def build_conditional(cfg: Config, data: Dataset, sde, key):
    """eps(t, x, label) for labels `0..C-1` and the null label `C` (float32 weights)."""
    num_labels = data.num_classes + 1
    grid = cfg.net == "grid" and data.levels is not None
    out = data.dim * data.levels if grid and data.levels is not None else data.dim
    mlp = sd.nn.MLP(
        data.dim + num_labels,
        width=cfg.width,
        depth=cfg.depth,
        key=key,
        dtype=jnp.float32,
        out_size=out,
    )
    net = LabelledNet(mlp, num_labels)
    if grid and data.levels is not None:
        return LabelledGridEps(net, sde, data.levels)
    return net


def dropout_loss(sched, label_dropout: float, null: int):
    """DDPM's eps-loss per entry of a batch of rows `[x, label]`, the label replaced by `null`
    with probability `label_dropout` (label dropout)."""

    def per_example(key, model, row):
        x0, label = row[:-1], row[-1].astype(jnp.int32)
        k_drop, k_loss = jax.random.split(key)
        label = jnp.where(jax.random.bernoulli(k_drop, label_dropout), null, label)
        loss = sd.diffusion_loss(k_loss, sched, lambda t, x: model(t, x, label), x0)
        return loss / x0.size

    def loss_fn(model, key, batch):
        keys = jax.random.split(key, batch.shape[0])
        return jnp.mean(jax.vmap(per_example, (0, None, 0))(keys, model, batch))

    return loss_fn


def stage_paths(cfg: Config, kind: str) -> tuple[pathlib.Path, pathlib.Path]:
    """Finished and in-progress checkpoints of an extra model, named by a hash of its settings
    (in `OUT/checkpoints/`, shared by every run folder, like the main network's)."""
    folder = pathlib.Path(cfg.out) / "checkpoints"
    h = settings_hash(cfg.stage_settings(kind))
    return folder / f"{kind}-{h}.eqx", folder / f"{kind}-{h}.partial.eqx"


def train_conditional(cfg: Config, data: Dataset, sched, sde, key, log=print):
    """Train (resume, re-use) the conditional model; `(net, losses, seconds, reused)`."""
    assert data.train_labels is not None
    k_init, k_train = jax.random.split(key)
    net = build_conditional(cfg, data, sde, k_init)
    opt = build_optimiser(cfg, cfg.cond_steps)
    loss = dropout_loss(sched, cfg.label_dropout, data.num_classes)
    step = sd.nn.make_train_step(loss, opt, ema_decay=cfg.ema_decay)
    rows = np.concatenate([data.train, data.train_labels[:, None].astype(np.float32)], axis=1)
    state, losses, seconds, reused = train_checkpointed(
        stage_paths(cfg, "conditional"),
        cfg.stage_settings("conditional"),
        sd.nn.init_train_state(net, opt),
        step,
        jnp.asarray(rows, jnp.float32),
        k_train,
        num_steps=cfg.cond_steps,
        batch_size=cfg.batch_size,
        retrain=cfg.retrain,
        progress=cfg.progress,
        desc="training (conditional)",
        log=log,
    )
    return state.ema, losses, seconds, reused


# ----------------------------------------------------------------------------- the classifier
class Classifier:
    """Multinomial logistic regression on the 64 pixels (scikit-learn), the judge of the
    guided samples and the inpainted digits."""

    def __init__(self, data: Dataset):
        from sklearn.linear_model import LogisticRegression

        assert data.train_labels is not None and data.test_labels is not None
        self.model = LogisticRegression(C=0.1, max_iter=2000)
        self.model.fit(data.train, data.train_labels)
        self.test_accuracy = self.accuracy(data.test, data.test_labels)

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.model.predict(np.clip(x, -1.0, 1.0)) == labels))

    def confidence(self, x: np.ndarray, labels: np.ndarray) -> float:
        """Mean probability the classifier gives the intended label."""
        p = self.model.predict_proba(np.clip(x, -1.0, 1.0))
        return float(np.mean(p[np.arange(len(labels)), labels]))


# ----------------------------------------------------------------------------- guidance sweep
@eqx.filter_jit
def _guided(net, sched, tau, x_T, labels, scale, null: int):
    """DDIM (eta = 0) samples of the guided model, x0 clipped to [-1, 1]; `scale` traced, so one
    compilation serves every w."""
    model = sd.ClipX0(sd.ClassifierFreeGuidance(sd.EpsModel(net), scale, null=null), -1.0, 1.0)
    draw = lambda x, c: sd.sample(None, sched, model, sd.DDIM(), tau, x, cond=(c,)).x
    return jax.vmap(draw)(x_T, labels)


@dataclasses.dataclass
class Guidance:
    """What the guidance sweep measured (per scale `w`, as Python numbers for JSON)."""

    scales: list[float]
    samples: dict[float, np.ndarray]  # w -> (C, per_class, d)
    accuracy: dict[float, float]
    confidence: dict[float, float]
    diversity: dict[float, float]
    steps: int
    per_class: int


def diversity(x: np.ndarray) -> float:
    """Mean over classes and pixels of the standard deviation across one class's samples."""
    return float(np.mean(np.std(x, axis=1)))


def guidance_sweep(cfg: Config, data: Dataset, sched, net, key, clf: Classifier) -> Guidance:
    """`per_class` samples of every digit at every guidance scale, from the same noise."""
    C, m = data.num_classes, cfg.guidance_per_class
    K = min(cfg.guidance_k, sched.num_steps)
    tau = sd.grids.even(sched.num_steps, K)
    x_T = jax.random.normal(key, (C * m, data.dim), jnp.float32)
    labels = jnp.repeat(jnp.arange(C, dtype=jnp.int32), m)
    out = Guidance(list(cfg.guidance_scales), {}, {}, {}, {}, K, m)
    with progress_bar(len(cfg.guidance_scales), "guided sampling", "scale", cfg.progress) as bar:
        for w in cfg.guidance_scales:
            scale = jnp.asarray(w, jnp.float32)
            x = np.asarray(_guided(net, sched, tau, x_T, labels, scale, C))
            y = np.asarray(labels)
            out.samples[w] = x.reshape(C, m, data.dim)
            out.accuracy[w] = clf.accuracy(x, y)
            out.confidence[w] = clf.confidence(x, y)
            out.diversity[w] = diversity(out.samples[w])
            bar.update(1)
    return out


def conditional_bpd(cfg: Config, data: Dataset, sde, net, key) -> dict:
    """PF-ODE bits/dim of held-out digits given their label (w = 1), and under the same network
    with the null label (the unconditional model), paired (same noise and probes)."""
    assert data.test_labels is not None and data.levels is not None
    n = min(cfg.num_extra_ode, data.test.shape[0])
    xs, labels = data.test[:n], data.test_labels[:n]
    model = sd.EpsModel(net)
    common: dict = dict(levels=data.levels, progress=cfg.progress)
    cond = likelihood.bits_per_dim(
        sde, model, xs, key, cond=labels, desc="PF-ODE (given the label)", **common
    )
    null = np.full_like(labels, data.num_classes)
    uncond = likelihood.bits_per_dim(
        sde, model, xs, key, cond=null, desc="PF-ODE (null label)", **common
    )
    gain, gain_se = likelihood.paired(cond, uncond)
    return {
        "conditional": likelihood.public(cond),
        "null_label": likelihood.public(uncond),
        # bits per digit the label is worth: E[log2 p(x|c) - log2 p(x)] = I-like, <= log2(10)
        "label_bits_per_digit": gain * data.dim,
        "label_bits_per_digit_stderr": gain_se * data.dim,
        "log2_num_classes": math.log2(data.num_classes),
    }
