"""Exponential moving averages of network **parameters** (in place, no gradient).

Two forms are used in this literature:

* :func:`ema_update` — the mean-teacher update ``teacher ← m·teacher + (1−m)·student`` over
  parameters with identical names and shapes (UA-MT/SSL4MIS ``update_ema_variables``, used by
  MagicNet's teacher). Strict: the two modules must have the same parameter names and shapes.
* :func:`ema_average_into` — GenericSSL / A&D's decoder aggregation
  ``θ ← m·θ + (1−m)·mean(sources)`` (docs/methods.md#training-step, step 1; reference
  ``xmed-lab/GenericSSL@e73bde94:code/train_diffusion.py``, loop over ``decoder_theta.named_parameters()``
  before each iteration, ``ema_w = 0.99``). Lenient, as the reference: a target parameter is
  updated only when every source has a parameter of the same name and shape (so D_ξ's time
  projections, absent from D_θ, are never involved) and it is not excluded by ``skip``.

Both update **parameters only**: buffers (batch-norm running statistics, ``num_batches_tracked``)
are left as they are — the target keeps its own statistics. Updates are in place on the existing
``nn.Parameter`` objects (the reference assigns ``.data``), so optimizer state attached to them
(SGD momentum) is preserved. Both run under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = ["ema_update", "ema_average_into"]


def _check_momentum(fn: str, momentum) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"{fn}: `momentum` must be a float in [0, 1], got {momentum!r}.")
    return float(momentum)


def _check_module(fn: str, name: str, module) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{fn}: `{name}` must be an nn.Module, got {type(module).__name__}.")
    return module


def _skip_predicate(skip) -> Callable[[str], bool]:
    if skip is None:
        return lambda name: False
    if callable(skip):
        return skip
    if isinstance(skip, str):
        skip = (skip,)
    if isinstance(skip, Iterable):
        parts = tuple(skip)
        if not all(isinstance(p, str) for p in parts):
            raise TypeError(f"ema_average_into: `skip` must contain strings, got {parts!r}.")
        return lambda name: any(p in name for p in parts)
    raise TypeError(
        "ema_average_into: `skip` must be None, a callable name -> bool, or name substrings; "
        f"got {type(skip).__name__}."
    )


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float = 0.99) -> None:
    """Mean-teacher update ``p_T ← m·p_T + (1−m)·p_S`` for every parameter (buffers untouched).

    The caller chooses ``m`` (e.g. UA-MT's warm-up ``min(1 − 1/(step+1), 0.99)``).

    Args:
        teacher: module updated in place.
        student: module with the same parameter names and shapes.
        momentum: ``m`` in ``[0, 1]``; ``1`` leaves the teacher unchanged, ``0`` copies the student.

    Raises:
        TypeError: a non-module argument.
        ValueError: ``momentum`` outside ``[0, 1]``, or parameter names/shapes that differ.

    Example:
        >>> teacher, student = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> ema_update(teacher, student, momentum=0.99)
    """
    _check_module("ema_update", "teacher", teacher)
    _check_module("ema_update", "student", student)
    m = _check_momentum("ema_update", momentum)
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(t_params) ^ set(s_params))
        raise ValueError(f"ema_update: teacher and student parameter names differ, e.g. {missing[:3]}.")
    for name, p_t in t_params.items():
        p_s = s_params[name]
        if p_t.shape != p_s.shape:
            raise ValueError(
                f"ema_update: parameter {name!r} has shape {tuple(p_t.shape)} in the teacher and "
                f"{tuple(p_s.shape)} in the student."
            )
        p_t.mul_(m).add_(p_s.detach().to(p_t.dtype), alpha=1.0 - m)


@torch.no_grad()
def ema_average_into(
    target: nn.Module,
    sources: nn.Module | Sequence[nn.Module],
    momentum: float = 0.99,
    skip: None | str | Iterable[str] | Callable[[str], bool] = None,
) -> list[str]:
    """``p ← m·p + (1−m)·mean_k(p_k)`` for each matching parameter of ``target`` (A&D step 1).

    GenericSSL: ``ema_average_into(net.decoder_theta, [net.decoder_xi, net.decoder_psi], 0.99)``
    before every training iteration, i.e. ``θ ← 0.99·θ + 0.01·(ξ + ψ)/2``.

    Args:
        target: module updated in place.
        sources: one module or a non-empty sequence of modules to average.
        momentum: ``m`` in ``[0, 1]`` (reference ``ema_w = 0.99``).
        skip: parameters to leave alone: a predicate ``name -> bool`` or one/several name
            substrings (e.g. ``"temb"``). Names are those of ``target.named_parameters()``.

    Returns:
        Names of the updated parameters, in ``target.named_parameters()`` order. A parameter is
        skipped when ``skip`` says so or when some source lacks a parameter of that name and shape.

    Raises:
        TypeError: non-module target/sources or a bad ``skip``.
        ValueError: empty ``sources`` or ``momentum`` outside ``[0, 1]``.

    Example:
        >>> theta, xi, psi = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
        >>> ema_average_into(theta, [xi, psi], momentum=0.99)
        ['weight', 'bias']
    """
    fn = "ema_average_into"
    _check_module(fn, "target", target)
    if isinstance(sources, nn.Module):
        sources = [sources]
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence) or len(sources) == 0:
        raise ValueError(f"{fn}: `sources` must be a module or a non-empty sequence of modules, got {sources!r}.")
    for i, src in enumerate(sources):
        _check_module(fn, f"sources[{i}]", src)
    m = _check_momentum(fn, momentum)
    excluded = _skip_predicate(skip)
    source_params = [dict(src.named_parameters()) for src in sources]
    updated: list[str] = []
    for name, p in target.named_parameters():
        if excluded(name):
            continue
        matches = [params.get(name) for params in source_params]
        if any(q is None or q.shape != p.shape for q in matches):
            continue
        mean = torch.stack([q.detach().to(p.dtype) for q in matches]).mean(dim=0)
        p.mul_(m).add_(mean, alpha=1.0 - m)
        updated.append(name)
    return updated
