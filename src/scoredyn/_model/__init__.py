from .base import (
    AbstractModel as AbstractModel,
    EpsModel as EpsModel,
    ScoreModel as ScoreModel,
    VModel as VModel,
    X0Model as X0Model,
    check_model as check_model,
)
from .clip import ClipX0 as ClipX0
