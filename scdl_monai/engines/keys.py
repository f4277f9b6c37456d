"""Keys of the semi-supervised engine's batches, ``engine.state.output`` and loss terms.

The first four values equal ``monai.utils.CommonKeys`` so MONAI handlers configured with
``from_engine(["pred", "label"])`` or ``from_engine(["loss"], first=True)`` work unchanged.
"""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["SSLKeys"]


class SSLKeys(StrEnum):
    """Names used by :class:`~scdl_monai.engines.trainer.SemiSupervisedTrainer` and the methods.

    - ``IMAGE`` / ``LABEL``: labeled batch image (B_l, C_in, *spatial) and label (B_l, 1, *spatial).
    - ``PRED``: logits of the method's inference prediction on the labeled images (detached).
    - ``LOSS``: the total loss that was back-propagated (detached).
    - ``IMAGE_U``: name of the unlabeled image (B_u, C_in, *spatial) where one is stored; unlabeled
      batches themselves use ``IMAGE`` (they are read with the trainer's ``prepare_batch``).
    - ``LOSS_SUP`` / ``LOSS_UNSUP`` / ``LOSS_CPS``: named loss terms reported by the methods.
    - ``UNSUP_WEIGHT``: current weight of the unsupervised term (reported as a term for logging).
    """

    IMAGE = "image"
    LABEL = "label"
    PRED = "pred"
    LOSS = "loss"
    IMAGE_U = "image_u"
    LOSS_SUP = "loss_sup"
    LOSS_UNSUP = "loss_unsup"
    LOSS_CPS = "loss_cps"
    UNSUP_WEIGHT = "unsup_weight"
