"""scdl_monai.losses"""

from scdl_monai.losses.segmentation import DiceCELoss, SoftDiceLoss, WeightedCELoss
