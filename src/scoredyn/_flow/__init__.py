from .interpolant import AbstractInterpolant as AbstractInterpolant, Interpolant as Interpolant
from .loss import flow_matching_loss as flow_matching_loss
from .rectified import RectifiedFlow as RectifiedFlow
from .shift import TimeShift as TimeShift
from .velocity import VelocityModel as VelocityModel
