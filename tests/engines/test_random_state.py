"""RandomStates: the checkpointed random state restores every generator a training run draws from."""

import random

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandFlipd, RandSpatialCropd

from scdl_monai.engines.random_state import RandomStates, find_random_states


def _pipeline():
    return Compose([RandSpatialCropd("image", roi_size=(4, 4, 4), random_size=False), RandFlipd("image", prob=0.5)])


def _draws(pipeline):
    sample = pipeline({"image": torch.arange(512.0).reshape(1, 8, 8, 8)})["image"]
    return torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], sample


def test_save_then_load_replays_every_generator(tmp_path):
    pipeline = _pipeline()
    pipeline.set_random_state(seed=3)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    states = RandomStates([pipeline])
    torch.save(states.state_dict(), tmp_path / "rng.pt")
    first = _draws(pipeline)
    states.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))  # tensors and numbers only
    again = _draws(pipeline)
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert torch.equal(first[3], again[3])  # the random crop and flip of the transforms
    assert not torch.equal(_draws(pipeline)[0], first[0])  # and the draws do move on


def test_finds_nested_transform_states_once():
    inner = _pipeline()
    outer = Compose([inner, RandFlipd("image", prob=0.5)])
    found = find_random_states([outer, inner])
    assert len({id(r) for r in found}) == len(found)
    assert len(found) == len(find_random_states([inner])) + 2  # the outer Compose and its RandFlipd
    assert inner.R in found and inner.transforms[0].cropper.R in found  # wrapped array transforms too


def test_a_changed_pipeline_is_refused():
    state = RandomStates([_pipeline()]).state_dict()
    with pytest.raises(ValueError, match=r"holds 4 random transform state\(s\), this pipeline has 2"):
        RandomStates([Compose([RandFlipd("image", prob=0.5)])]).load_state_dict(state)
