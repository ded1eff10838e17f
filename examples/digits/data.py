"""Data sets for the demo: the 8x8 digits bundled with scikit-learn, and 2-D toy sets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

DATASETS = ("digits", "mixture", "moons", "circles")

#: Number of grey levels of sklearn's digits (integers 0..16).
DIGIT_LEVELS = 17
#: Held-out digits (the other 1,500 train).
NUM_DIGITS_TEST = 297
_SPLIT_SEED = 20240601  # the train / held-out split is fixed, whatever --seed says


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train / held-out split and what the evaluation needs to know about it.

    Attributes:
        name: one of `DATASETS`.
        train, test: float32 arrays `(n, d)`.
        levels: grid size for quantised data (17 for the digits), `None` for continuous data.
        image_shape: `(8, 8)` for images, `None` for points.
        oracle: the exact Gaussian mixture (only for `mixture`), else `None`.
        data_range: `(a, b)` bounds of the data, for Analytic-DPM's variance clipping, or `None`.
        description: one line for the report.
        train_labels, test_labels: int arrays `(n,)` of class labels (the digits' 0..9), or
            `None` for unlabelled data.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    levels: int | None
    image_shape: tuple[int, int] | None
    oracle: sd.toy.GaussianMixture | None
    data_range: tuple[float, float] | None
    description: str
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for unlabelled data)."""
        return 0 if self.train_labels is None else int(self.train_labels.max()) + 1


def load_digits(num_test: int = NUM_DIGITS_TEST) -> Dataset:
    r"""sklearn's 1,797 handwritten 8x8 digits, levels $k\in\{0..16\}$ mapped to $x = k/8 - 1$.

    The grid has $L = 17$ levels of spacing $\Delta = 2/16$ in $[-1, 1]$. The split (1,500 train,
    297 held out) uses a fixed permutation.
    """
    from sklearn.datasets import load_digits as _load

    raw, y = _load(return_X_y=True)  # (1797, 64), integers 0..16 stored as float64
    levels = DIGIT_LEVELS
    x = (raw / ((levels - 1) / 2.0) - 1.0).astype(np.float32)
    perm = np.random.default_rng(_SPLIT_SEED).permutation(x.shape[0])
    test, train = x[perm[:num_test]], x[perm[num_test:]]
    y = np.asarray(y, np.int32)
    return Dataset(
        name="digits",
        train=train,
        test=test,
        levels=levels,
        image_shape=(8, 8),
        oracle=None,
        data_range=(-1.0, 1.0),
        description=(
            f"scikit-learn's 8x8 handwritten digits: {train.shape[0]} train / {test.shape[0]} "
            f"held-out images, d = 64, {levels} grey levels scaled to [-1, 1]"
        ),
        train_labels=y[perm[num_test:]],
        test_labels=y[perm[:num_test]],
    )


def mixture_oracle() -> sd.toy.GaussianMixture:
    """Eight Gaussians on a circle of radius 1.2 with anisotropic covariances (float32)."""
    k = 8
    ang = 2 * np.pi * np.arange(k) / k
    means = 1.2 * np.stack([np.cos(ang), np.sin(ang)], -1)
    covs = []
    for a in ang:  # elongated along the tangent of the circle
        u = np.array([-np.sin(a), np.cos(a)])
        v = np.array([np.cos(a), np.sin(a)])
        covs.append(0.03 * np.outer(u, u) + 0.004 * np.outer(v, v))
    w = np.linspace(1.0, 2.0, k)
    w = w / w.sum()
    return sd.toy.GaussianMixture(
        jnp.asarray(w, jnp.float32),
        jnp.asarray(means, jnp.float32),
        jnp.asarray(np.stack(covs), jnp.float32),
    )


def _standardise(train, test):
    mu, std = train.mean(0), train.std(0).mean()
    return ((train - mu) / std).astype(np.float32), ((test - mu) / std).astype(np.float32)


def load_toy(name: str, num_train: int = 20_000, num_test: int = 1000) -> Dataset:
    """2-D sets: `mixture` (exact oracle), and sklearn's `moons` and `circles` (standardised)."""
    rng = np.random.default_rng(_SPLIT_SEED)
    oracle = None
    if name == "mixture":
        oracle = mixture_oracle()
        both = np.asarray(oracle.sample(jax.random.key(_SPLIT_SEED), num_train + num_test))
        train, test = both[:num_train], both[num_train:]
        desc = "a 2-D mixture of 8 Gaussians (exact score, eps and density known)"
    elif name in ("moons", "circles"):
        from sklearn import datasets

        n = num_train + num_test
        seed = int(rng.integers(2**31))
        if name == "moons":
            x, _ = datasets.make_moons(n, noise=0.05, random_state=seed)
        else:
            x, _ = datasets.make_circles(n, noise=0.04, factor=0.5, random_state=seed)
        train, test = _standardise(x[:num_train], x[num_train:])
        desc = f"scikit-learn's two {name} (2-D, standardised)"
    else:
        raise ValueError(f"`data` must be one of {DATASETS}, got {name!r}.")
    return Dataset(
        name=name,
        train=np.asarray(train, np.float32),
        test=np.asarray(test, np.float32),
        levels=None,
        image_shape=None,
        oracle=oracle,
        data_range=None,
        description=f"{desc}: {num_train} train / {num_test} held-out points",
    )


def load(name: str) -> Dataset:
    """Load a demo data set by name."""
    if name == "digits":
        return load_digits()
    return load_toy(name)
