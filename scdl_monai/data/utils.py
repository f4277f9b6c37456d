"""Small helpers shared by every layer: atomic file writes, readable JSON, argument checks, name
look-up (:class:`UnknownNameError`) and the ``fire`` entry point of the command-line modules.

It sits in the lowest layer (data) so that networks, losses, methods, engines and the CLIs can all
use it without an upward import; it imports only the standard library at module level (MONAI and
``fire`` are imported when first needed), so ``import scdl_monai.data.utils`` stays cheap.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "as_flag",
    "atomic_write",
    "format_json",
    "check_number",
    "did_you_mean",
    "UnknownNameError",
    "look_up",
    "user_error_message",
    "install_error_hook",
    "run_fire",
]

#: Environment variable: when set, command-line errors keep their full traceback.
DEBUG_ENV = "SCDL_MONAI_DEBUG"


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


def format_json(obj: Any, indent: int = 0, width: int = 100) -> str:
    """``obj`` as JSON meant to be read and edited: 4-space indentation, one object key a line, and a
    list on one line when it holds no object, nests at most one level and fits in ``width`` columns
    (``[96, 96, 64]``, ``[["L", "R"], ["P", "A"], ["I", "S"]]``). ``indent`` is the column ``obj``
    starts at."""
    flat = json.dumps(obj, ensure_ascii=False)
    if not isinstance(obj, (list, dict)) or not obj:
        return flat
    if isinstance(obj, list) and indent + len(flat) <= width and all(_scalars(v) for v in obj):
        return flat
    pad = " " * (indent + 4)
    if isinstance(obj, dict):
        lines = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {format_json(v, indent + 4, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(lines) + "\n" + " " * indent + "}"
    return "[\n" + ",\n".join(pad + format_json(v, indent + 4, width) for v in obj) + "\n" + " " * indent + "]"


def _scalars(value: Any) -> bool:
    """A JSON scalar, or a list of scalars."""
    if isinstance(value, list):
        return not any(isinstance(v, (list, dict)) for v in value)
    return not isinstance(value, dict)


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


def did_you_mean(value: str, choices: Collection[str]) -> str:
    """Error-message tail ``"did you mean 'x'? available: a, b"`` (closest match by :mod:`difflib`)."""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}available: {', '.join(names)}"


class UnknownNameError(ValueError):
    """A name that is not one of the valid choices: a backbone, a weighting, a dataset, a transform...

    It is a :class:`ValueError`, so library callers catch it as usual. The command-line entry points
    print it as one line that names the **config key** the name came from (e.g.
    ``network_def#name='resnet'``) when it was raised while MONAI instantiated a bundle component:
    :func:`run_fire` (this package's CLIs) and :func:`install_error_hook` (what the bundles'
    ``initialize`` installs for ``python -m monai.bundle run``); see :func:`user_error_message`.

    Args:
        argument: the argument (of ``owner``) that holds the name.
        value: the name given.
        choices: the valid names.
        owner: the function or class that refused it.
        message: the library-level message (default: ``"{owner}: invalid `{argument}`={value!r}.
            did you mean ...? available: ..."``).
    """

    def __init__(
        self, argument: str, value: Any, choices: Collection[str], owner: str | None = None, message: str | None = None
    ) -> None:
        self.argument, self.value, self.owner = argument, value, owner
        self.choices = tuple(str(c) for c in choices)
        default = f"{_owner_prefix(owner)}invalid `{argument}`={value!r}. {self._hint()}"
        super().__init__(message or default)

    def for_key(self, key: str) -> str:
        """The message for the config key ``key`` the name was read from (one line)."""
        return f"{key}={self.value!r} is not valid: {self._hint()}"

    def _hint(self) -> str:
        return did_you_mean(str(self.value).strip().lower(), self.choices)


def look_up(
    value: Any,
    choices: Collection[str],
    name: str,
    owner: str | None = None,
    type_error: type[Exception] = ValueError,
) -> Any:
    """The choice matching ``value`` (stripped, lower-cased), with one-line messages that name the
    argument, the valid choices and the closest one.

    Returns:
        the matching choice (its value when ``choices`` is a mapping).

    Raises:
        ``type_error``: ``value`` is not a string.
        UnknownNameError: ``value`` is not one of ``choices``
            (``"{owner}: invalid `{name}`='x'. did you mean 'y'? available: a, b"``).
    """
    if not isinstance(value, str):
        raise type_error(f"{_owner_prefix(owner)}`{name}` must be one of {tuple(choices)}, got {value!r}.")
    key = value.strip().lower()
    if key not in choices:
        raise UnknownNameError(name, value, choices, owner)
    return choices[key] if isinstance(choices, Mapping) else key


def user_error_message(error: BaseException) -> str | None:
    """One line for a user error that reached a command-line entry point, or None for anything else.

    The user errors are :class:`UnknownNameError` and MONAI's "Cannot locate class or function path"
    (a mistyped ``_target_``), also when MONAI's config machinery wrapped them in its
    ``RuntimeError("Failed to instantiate component ...")``. When the error arose while MONAI
    resolved a bundle component, the message names the config key: the component's id plus the
    argument (``network_def#name``), or the top-level id the argument refers to (``weighting_a``
    for ``"weighting_a": "@weighting_a"``). MONAI's exceptions do not carry that id, so it is read
    from the traceback (the ``id`` of the innermost ``ReferenceResolver._resolve_one_item`` frame
    that resolves a component); where that fails the message is the library's own.
    """
    chain, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    unknown = next((e for e in chain if isinstance(e, UnknownNameError)), None)
    missing = next((e for e in chain if isinstance(e, ModuleNotFoundError) and "Cannot locate" in str(e)), None)
    if unknown is None and missing is None:
        return None
    component, config = _failed_component(chain)
    if unknown is not None:
        if component is None:
            return str(unknown)
        if unknown.argument not in config:  # refused deeper down, e.g. inside a network the component builds
            return f"{component}: {unknown}"
        source = config[unknown.argument]
        return unknown.for_key(source[1:].replace("::", "#") if _is_reference(source) else f"{component}#{unknown.argument}")
    target = str(config.get("_target_")) if component is not None else str(missing).partition(": ")[2].strip("'.")
    where = f"{component}#_target_=" if component is not None else ""
    return f"{where}{target!r} cannot be found: {did_you_mean(target, _public_names(target))}"


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("@") and value[1:].replace("#", "").replace(":", "").isidentifier()


def _failed_component(chain: list[BaseException]) -> tuple[str | None, Mapping]:
    """The id (``#``-separated) and unresolved config of the config item MONAI was resolving when
    the error arose, if that item is a component (``_target_``); ``(None, {})`` otherwise."""
    innermost: tuple[Any, Any, Any] = (None, None, None)
    for error in chain:
        for frame, _ in traceback.walk_tb(error.__traceback__):
            if frame.f_code.co_name == "_resolve_one_item" and "item" in frame.f_locals:
                innermost = (frame.f_locals.get("id"), frame.f_locals["item"], frame.f_locals.get("item_config"))
    key, item, config = innermost
    if type(item).__name__ != "ConfigComponent" or not isinstance(key, str) or not isinstance(config, Mapping):
        return None, {}
    return key.replace("::", "#"), config


def _public_names(target: str) -> list[str]:
    """``module.Name`` paths of the public names of ``target``'s module (empty if it cannot be imported)."""
    import importlib

    module_name = target.rpartition(".")[0]
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError):
        return []
    names = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
    return [f"{module_name}.{n}" for n in names if callable(getattr(module, n, None))]


def install_error_hook() -> None:
    """Print an uncaught user error (:func:`user_error_message`) as one ``error: ...`` line, no traceback.

    For ``python -m monai.bundle run``, whose own entry point prints MONAI's full traceback: the
    bundles call this first in ``initialize``. It changes only how an *uncaught* exception is shown
    (exit status 1 as before); exception types are unchanged, so code that catches them is not
    affected. Other exceptions keep the previous hook; with ``SCDL_MONAI_DEBUG`` set, all do.
    Calling it again does nothing.
    """
    previous = sys.excepthook
    if getattr(previous, "scdl_monai_hook", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        message = None if os.environ.get(DEBUG_ENV) else user_error_message(value)
        if message is None:
            previous(kind, value, tb)
        else:
            print(f"error: {message}", file=sys.stderr)

    hook.scdl_monai_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def run_fire(
    component: Any,
    argv: list[str] | None = None,
    name: str | None = None,
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError),
    reraise: bool = False,
) -> int:
    """Run ``fire.Fire(component, command=argv, name=name)``; returns the exit status.

    A user error (one of ``errors``, or an unknown name / ``_target_`` inside MONAI's config
    machinery, see :func:`user_error_message`) prints one ``error: ...`` line on stderr and returns
    1 instead of a traceback (``reraise=True`` raises it, for debugging); success returns 0.
    """
    import fire

    try:
        fire.Fire(component, command=argv, name=name)
    except Exception as err:
        message = user_error_message(err)
        if message is None and isinstance(err, errors):
            message = str(err)
        if message is None or reraise:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0
