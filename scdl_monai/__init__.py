"""scdl_monai: MONAI-native class-imbalanced semi-supervised 3D medical image segmentation."""

__version__ = "0.1.0"
