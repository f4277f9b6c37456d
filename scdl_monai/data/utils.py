"""Small helpers shared by every layer: atomic file writes and the ``fire`` entry point of the
command-line modules.

It sits in the lowest layer (data) so that networks, losses, methods, engines and the CLIs can all
use it without an upward import; it imports only the standard library at module level (``fire``
is imported when first needed), so ``import scdl_monai.data.utils`` stays cheap.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "run_fire"]


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
