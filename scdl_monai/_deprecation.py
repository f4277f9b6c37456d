"""Old import paths of moved code: lazy re-exports that warn once per name (``DeprecationWarning``).

Bundles trained with an earlier layout name their classes by ``_target_`` paths such as
``scdl_monai.precision.PrecisionPolicy``; the old modules stay importable through
:func:`moved_names`, which resolves each name from its new module on first use (MONAI's config
parser and ``pydoc.locate`` reach it through the module's ``__getattr__``). Standard library only,
so every layer may use it.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence

__all__ = ["SINCE", "moved_names", "run_moved_command"]

#: the release that moved the loose top-level modules into their layers.
SINCE = "0.2.0"


def moved_names(
    old_module: str, homes: Mapping[str, str] | Sequence[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for an old module whose names now live in other modules.

    Args:
        old_module: the old dotted module path (the alias module's ``__name__``).
        homes: moved name -> the dotted path of the module it lives in now; or the new modules
            themselves (a name is looked up in each, in order: the old module moved or split whole).

    Returns:
        a module-level ``__getattr__`` that imports the new home, warns once per name with a
        ``DeprecationWarning`` naming the new path, and returns the object; and a ``__dir__``.

    Example:
        >>> __getattr__, __dir__ = moved_names("scdl_monai.precision", ["scdl_monai.engines.precision"])
    """
    warned: set[str] = set()

    def _home(name: str) -> str | None:
        if isinstance(homes, Mapping):
            return homes.get(name)
        return next((m for m in homes if hasattr(importlib.import_module(m), name)), None)

    def __getattr__(name: str) -> object:
        home = _home(name)
        if home is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        if name not in warned:
            warned.add(name)
            warnings.warn(
                f"{old_module}.{name} is deprecated since scdl_monai {SINCE}: use {home}.{name} "
                "(update the import or the bundle's _target_; the old path will be removed).",
                DeprecationWarning,
                stacklevel=2,
            )
        return getattr(importlib.import_module(home), name)

    def __dir__() -> list[str]:
        if isinstance(homes, Mapping):
            return sorted(homes)
        return sorted({n for m in homes for n in getattr(importlib.import_module(m), "__all__", ())})

    return __getattr__, __dir__


def run_moved_command(old: str, new: str) -> int:
    """Run the command ``python -m <new>`` for the old ``python -m <old>``, after a one-line notice on stderr.

    The old commands of the README (``python -m scdl_monai.inference``, ``scdl_monai.demo``,
    ``scdl_monai.bundles``) keep working with the same arguments; the notice names the new one.

    Returns:
        the exit status of the new command's ``main()``.
    """
    print(f"note: `python -m {old}` is deprecated since scdl_monai {SINCE}; use `python -m {new}`.", file=sys.stderr)
    return importlib.import_module(new).main()
