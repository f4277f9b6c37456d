"""scdl_monai.methods"""

from scdl_monai.methods.base import LogitMean, MethodOutput, SemiSupervisedMethod
from scdl_monai.methods.cps import CPS
from scdl_monai.methods.supervised import Supervised
