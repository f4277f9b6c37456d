"""Random-number-generator state as a checkpointable object, for exact resume.

Resuming from a checkpoint reproduces the uninterrupted run only if every random draw after the
checkpoint is the same: the shuffling of the loaders and the dropout/noise of the method (torch's
global generator), random augmentations (each MONAI ``Randomizable`` transform owns a
``numpy.random.RandomState`` ``R``; with ``num_workers=0`` these advance in the main process, with
workers they are re-seeded every epoch from torch's generator), and code using ``numpy.random`` or
``random``. ignite and MONAI save none of these. :class:`RandomStates` has ``state_dict`` /
``load_state_dict`` so that ``CheckpointSaver``/``CheckpointLoader`` capture and restore all of
them along with the weights (the practice of Hugging Face's ``Trainer``, which writes
``rng_state.pth`` next to every checkpoint).

The state dict holds only tensors and numbers, so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable, Transform

__all__ = ["RandomStates", "find_random_states"]


def find_random_states(*objects: Any) -> list[np.random.RandomState]:
    """Every ``numpy.random.RandomState`` reachable from MONAI transforms, in a fixed order.

    Walks lists, tuples, dicts and the attributes of MONAI ``Transform``/``Randomizable`` objects
    (``Compose`` and its children, wrappers holding sub-transforms); each state is listed once.
    """
    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, np.random.RandomState):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
        elif isinstance(obj, Mapping):
            for item in obj.values():
                walk(item)
        elif isinstance(obj, (Transform, Randomizable)):
            for item in vars(obj).values():
                walk(item)

    for obj in objects:
        walk(obj)
    return found


def _numpy_state(rs_state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = rs_state
    if name != "MT19937":
        raise ValueError(f"RandomStates: unsupported numpy bit generator {name!r}.")
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    keys = np.asarray(state["keys"].cpu().numpy(), dtype=np.uint32)
    return ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))


class RandomStates:
    """The random state of a training run: torch (CPU and CUDA), ``numpy.random``, ``random`` and
    the ``R`` of every random transform in ``transforms``.

    Put it in the checkpoint next to the method and optimizers::

        "checkpoint_state": {"method": "@method", ..., "trainer": "@train#trainer",
                             "rng": {"_target_": "scdl_monai.engines.random_state.RandomStates",
                                     "transforms": ["@train#preprocessing", "@train#unlabeled_preprocessing"]}}

    Args:
        transforms: the transform pipelines whose random states are saved (e.g. the labeled and
            unlabeled training ``Compose``); searched with :func:`find_random_states`.

    Raises:
        ValueError (on load): the checkpoint holds a different number of transform states (the
            pipeline changed since it was written).
    """

    def __init__(self, transforms: Iterable[Any] | None = None) -> None:
        self.transforms = list(transforms or [])

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python_version": random.getstate()[0],
            "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
            "python_gauss": random.getstate()[2],
            "transforms": [_numpy_state(rs.get_state()) for rs in find_random_states(self.transforms)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        targets = find_random_states(self.transforms)
        saved = list(state["transforms"])
        if len(saved) != len(targets):
            raise ValueError(
                f"RandomStates: the checkpoint holds {len(saved)} random transform state(s), this pipeline has "
                f"{len(targets)} (were the training transforms changed since the checkpoint was written?)."
            )
        torch.set_rng_state(state["torch"].cpu())
        np.random.set_state(_numpy_tuple(state["numpy"]))
        python = tuple(int(v) for v in state["python"].tolist())
        random.setstate((int(state["python_version"]), python, state["python_gauss"]))
        for rs, value in zip(targets, saved):
            rs.set_state(_numpy_tuple(value))
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
