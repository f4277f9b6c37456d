"""scdl_monai.handlers"""

from scdl_monai.handlers.schedules import UnsupWeightSchedule, poly_lr, poly_lr_scheduler, sigmoid_rampup
