"""Class weighting: class-balancing rules (pure functions of counts, Dice or confidence) and their trackers.

Trackers are ``nn.Module`` objects with their whole state in buffers (checkpointed with the method).

* :mod:`~scdl_monai.weighting.counts` — weights from voxel counts: DHC's DistDW, SimiS, CLD's static rule;
* :mod:`~scdl_monai.weighting.difficulty` — DHC's difficulty-aware DiffDW (also GenericSSL / A&D);
* :mod:`~scdl_monai.weighting.confidence` — CLD's per-class confidence and voxel sampling;
* :mod:`~scdl_monai.weighting.frequency` — MagicNet's class-frequency blending of cube-wise pseudo-labels.
"""

from scdl_monai.weighting.confidence import ConfidenceBank, cld_sampling_mask, cld_sampling_rate
from scdl_monai.weighting.counts import (
    CLD_ABSENT_RULES,
    CountWeights,
    DistDW,
    SimiSWeights,
    class_counts,
    cld_weights,
    distdw_weights,
    simis_weights,
)
from scdl_monai.weighting.difficulty import DiffDW, hard_dice_per_class
from scdl_monai.weighting.frequency import ClassFrequencyTracker, blend_pseudo_logits, class_frequency_weights

from scdl_monai.weighting import confidence, counts, difficulty, frequency  # the submodules, for __all__

__all__ = [*counts.__all__, *difficulty.__all__, *confidence.__all__, *frequency.__all__]
