"""Tests for scdl_monai.methods.base.plain_tensor (the other shared pieces are tested in test_cps.py)."""

import torch
from monai.data import MetaTensor

from scdl_monai.methods.base import plain_tensor


def test_plain_tensor_drops_meta_tensor_keeps_storage():
    meta = MetaTensor(torch.arange(6.0).reshape(2, 3), meta={"filename_or_obj": "x.nii.gz"})
    plain = plain_tensor(meta)
    assert type(plain) is torch.Tensor
    assert plain.data_ptr() == meta.data_ptr()  # same storage, no copy
    assert torch.equal(plain, torch.arange(6.0).reshape(2, 3))


def test_plain_tensor_leaves_other_values_alone():
    x = torch.ones(2)
    assert plain_tensor(x) is x
    assert plain_tensor(None) is None
