from .base import (
    AbstractModel as AbstractModel,
    EpsModel as EpsModel,
    ScoreModel as ScoreModel,
    VModel as VModel,
    X0Model as X0Model,
    check_model as check_model,
    check_model_output as check_model_output,
)
from .batched import BatchedNet as BatchedNet
from .clip import ClipX0 as ClipX0
from .edm import EDMPrecond as EDMPrecond
from .guidance import (
    ClassifierFreeGuidance as ClassifierFreeGuidance,
    ClassifierGuidance as ClassifierGuidance,
)
from .threshold import DynamicThreshold as DynamicThreshold
