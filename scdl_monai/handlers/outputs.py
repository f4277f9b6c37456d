"""Output and batch transforms that the bundle configs give MONAI's handlers.

Typed, importable replacements for Python lambdas inside JSON: a config names them with
``{"_target_": "scdl_monai.handlers.outputs.loss_terms", "_mode_": "callable"}`` (MONAI hands the
function itself, or a ``functools.partial`` with the given keyword arguments, to the handler).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scdl_monai.engines.keys import SSLKeys

__all__ = ["loss_terms", "batch_meta"]

#: ``engine.state.output`` entries that are data, not loss terms.
_DATA_KEYS = (SSLKeys.IMAGE.value, SSLKeys.LABEL.value, SSLKeys.PRED.value)


def loss_terms(output: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The loss terms of a training iteration's ``engine.state.output``: every entry but image, label, pred.

    The semi-supervised trainer decollates its output into a list of per-sample dicts whose scalar
    terms repeat; the first one is read. ``StatsHandler`` / ``TensorBoardStatsHandler`` log each
    term under its own name (``loss``, ``loss_sup``, ``loss_cps``, ``unsup_weight``...).

    Args:
        output: ``engine.state.output`` (a dict, or a list of dicts).

    Returns:
        ``{name: value}`` without the data entries.

    Raises:
        TypeError: ``output`` is neither a mapping nor a non-empty list of mappings.

    Example:
        >>> loss_terms([{"image": 0, "pred": 1, "loss": 0.5, "loss_sup": 0.4}])
        {'loss': 0.5, 'loss_sup': 0.4}
    """
    first = output[0] if isinstance(output, Sequence) and not isinstance(output, (str, bytes)) and output else output
    if not isinstance(first, Mapping):
        raise TypeError(f"loss_terms: expected the engine output as a dict or a list of dicts, got {type(output).__name__}.")
    return {k: v for k, v in first.items() if k not in _DATA_KEYS}


def batch_meta(batch: Sequence[Mapping[str, Any]], key: str = "image") -> list[Mapping[str, Any]]:
    """The meta dict of ``batch[i][key]`` for every item of a decollated batch (``MetricsSaver(batch_transform=...)``).

    ``MetricsSaver`` reads each case's ``filename_or_obj`` from these dicts to name the rows of its
    per-case metric files.

    Args:
        batch: ``engine.state.batch`` after decollation: a list of dicts of MetaTensors.
        key: the entry whose meta data is read.

    Raises:
        KeyError: an item has no ``key``; TypeError: ``batch[i][key]`` carries no ``meta``.
    """
    out = []
    for i, item in enumerate(batch):
        if key not in item:
            raise KeyError(f"batch_meta: batch item {i} has no {key!r} entry (keys: {sorted(item)}).")
        meta = getattr(item[key], "meta", None)
        if not isinstance(meta, Mapping):
            raise TypeError(f"batch_meta: batch item {i}[{key!r}] is a {type(item[key]).__name__} without meta data.")
        out.append(meta)
    return out
