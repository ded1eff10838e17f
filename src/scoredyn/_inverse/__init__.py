from .dps import DPS as DPS, DPSGuidance as DPSGuidance, DPSState as DPSState
from .inversion import ddim_inversion as ddim_inversion
from .repaint import RePaint as RePaint, RePaintInfo as RePaintInfo
from .replacement import Inpaint as Inpaint, InpaintState as InpaintState
