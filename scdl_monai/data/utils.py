"""Small helpers shared by every layer: atomic file writes, argument checks, option look-up and the
``fire`` entry point of the command-line modules.

It sits in the lowest layer (data) so that networks, losses, methods, engines and the CLIs can all
use it without an upward import; it imports only the standard library at module level (MONAI and
``fire`` are imported when first needed), so ``import scdl_monai.data.utils`` stays cheap.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

__all__ = ["as_flag", "atomic_write", "check_number", "look_up", "run_fire"]


def atomic_write(
    path: str | Path,
    write: Callable[[Path], Any],
    mode: int | None = None,
    prefix: str | None = None,
    suffix: str | None = None,
) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then ``os.replace`` it.

    A crash or an exception leaves no half-written ``path`` (and removes the temporary file).

    Args:
        path: the file to write; its folder is created when missing.
        write: writes the content to the temporary file it is given (which already exists, empty).
        mode: permission bits set on the file before it replaces ``path`` (default: leave the
            ``0o600`` of :func:`tempfile.mkstemp`).
        prefix: temporary file name prefix (default ``".<name>."``).
        suffix: temporary file name suffix (default: the extension of ``path``, both parts of a
            compressed one such as ``.nii.gz``, so writers that pick the format by name still work).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _owner_prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def _bound(integer: bool, minimum: float, strict: bool) -> str:
    kind = "int" if integer else "number"
    if minimum == 0:
        return f"a positive {kind}" if strict else f"a non-negative {kind}"
    if integer and minimum == 1 and not strict:
        return "a positive int"
    return f"{'an int' if integer else 'a number'} {'>' if strict else '>='} {minimum}"


def check_number(
    value: Any, name: str, owner: str | None = None, integer: bool = False, minimum: float = 0, strict: bool = False
) -> Any:
    """Check a numeric argument: an ``int`` (``integer=True``) or an int/float, ``>= minimum``
    (``> minimum`` when ``strict``); ``bool`` is refused.

    Returns:
        ``value`` itself for ``integer=True``, else ``float(value)``.

    Raises:
        ValueError: ``"{owner}: `{name}` must be a positive int, got 0."`` and the like.

    Example:
        >>> check_number(3, "n_filters", "VNet", integer=True, minimum=1)
        3
    """
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (value > minimum if strict else value >= minimum):
        raise ValueError(f"{_owner_prefix(owner)}`{name}` must be {_bound(integer, minimum, strict)}, got {value!r}.")
    return value if integer else float(value)


def as_flag(value: Any, name: str, owner: str | None = None) -> bool:
    """A bool, or its command-line spelling: ``"true"``/``"false"``, ``"yes"``/``"no"``, ``"1"``/``"0"``, ``"on"``/``"off"``.

    ``python -m monai.bundle run --channels_last true`` passes the string ``"true"`` (fire parses
    only Python literals such as ``True``); typed config components accept both through this.

    Raises:
        ValueError: anything else (naming ``name`` and the value).

    Example:
        >>> as_flag("False", "resume"), as_flag(True, "resume")
        (False, True)
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"{_owner_prefix(owner)}`{name}` must be true or false, got {value!r}.")


def look_up(
    value: Any,
    choices: Collection[str],
    name: str,
    owner: str | None = None,
    type_error: type[Exception] = ValueError,
) -> Any:
    """:func:`monai.utils.look_up_option` of ``value`` lower-cased (MONAI strips it), with messages
    that name the argument and keep MONAI's did-you-mean hint.

    Returns:
        the matching choice (its value when ``choices`` is a mapping).

    Raises:
        ``type_error``: ``value`` is not a string.
        ValueError: ``value`` is not one of ``choices``
            (``"{owner}: invalid `{name}`='x'. <MONAI's hint>"``).
    """
    from monai.utils import look_up_option

    if not isinstance(value, str):
        raise type_error(f"{_owner_prefix(owner)}`{name}` must be one of {tuple(choices)}, got {value!r}.")
    try:
        return look_up_option(value.lower(), choices)
    except ValueError as err:
        raise ValueError(f"{_owner_prefix(owner)}invalid `{name}`={value!r}. {err}".strip()) from None


def run_fire(
    component: Any,
    argv: list[str] | None = None,
    name: str | None = None,
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError),
    reraise: bool = False,
) -> int:
    """Run ``fire.Fire(component, command=argv, name=name)``; returns the exit status.

    A user error (one of ``errors``) prints one ``error: ...`` line on stderr and returns 1 instead
    of a traceback (``reraise=True`` raises it, for debugging); success returns 0.
    """
    import fire

    try:
        fire.Fire(component, command=argv, name=name)
    except errors as err:
        if reraise:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
