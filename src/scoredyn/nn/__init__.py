"""Small equinox score networks and an optax training step, enough for examples and demos.

Research code usually brings its own network: anything callable as `net(t, x) -> array like x`
works with the rest of the library.
"""

from ._conv import ConvNet as ConvNet
from ._embedding import SinusoidalEmbedding as SinusoidalEmbedding
from ._grid import GridEps as GridEps
from ._mlp import MLP as MLP, TimeMLP as TimeMLP, TwoHeadMLP as TwoHeadMLP
from ._train import (
    TrainState as TrainState,
    diffusion_batch_loss as diffusion_batch_loss,
    ema_update as ema_update,
    fit as fit,
    init_train_state as init_train_state,
    make_train_step as make_train_step,
)
