"""scdl_monai.engines"""

from scdl_monai.engines.keys import SSLKeys
from scdl_monai.engines.trainer import SemiSupervisedTrainer
