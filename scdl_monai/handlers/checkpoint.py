"""Checkpoints that are never half-written: MONAI's ``CheckpointSaver`` with atomic file writes.

MONAI 1.6's :class:`monai.handlers.CheckpointSaver` writes through ignite's ``DiskSaver`` with
``atomic=False``: ``torch.save`` streams straight into ``checkpoint_epoch=N.pt``, so a run killed
(SIGKILL, out-of-memory, a full disk) while saving leaves a truncated file under a checkpoint's
name, and for fixed names (``model.pt``, ``checkpoint_final.pt``) the previous file is deleted
*before* the new one is written. :class:`AtomicCheckpointSaver` keeps every behaviour and argument
of MONAI's saver and replaces only the disk writer:

* the state is written to a hidden temporary file in the same folder
  (``.<name>.partial-<random>``, which no ``*.pt`` pattern matches), flushed and ``fsync``-ed,
  then renamed onto the final name with :func:`os.replace` (atomic on POSIX and Windows when both
  lie on one file system), and the folder entry is ``fsync``-ed;
* ignite deletes the oldest checkpoint (``n_saved``) or the fixed-name file *before* writing
  the new one; here the deletion waits until the new file is complete (a fixed-name file is simply
  replaced), so a kill at any moment leaves the previous complete checkpoint on disk;
* temporary files left by a killed run are removed when the next saver is attached.

It also does not write the "final" checkpoint when training stops on a non-finite loss
(:class:`~scdl_monai.handlers.nonfinite.NonFiniteLossError`): that state is the one that failed,
and ``--resume true`` must pick the last good checkpoint instead.

:class:`FinalModelSaver` completes the model-selection policy of the bundles: the best validation
model goes to ``models/model.pt`` through the evaluator's key-metric saver, and a run during which
no validation ran (shorter than ``val_interval``) writes its final weights there instead, so every
training run leaves a ``model.pt`` for evaluation and inference.

:func:`resume_checkpoint` is the bundles' ``resume_from`` (``--resume true``): the newest complete
checkpoint of the run (:func:`latest_checkpoint`), or ``""`` to start fresh.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from scdl_monai.data.utils import as_flag, atomic_write
from scdl_monai.handlers.nonfinite import NonFiniteLossError

__all__ = [
    "PARTIAL_MARK",
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "FinalModelSaver",
    "latest_checkpoint",
    "resume_checkpoint",
]

#: Part of every temporary file name (``.<final name>.partial-<random>``).
PARTIAL_MARK = ".partial-"


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` writing through a temporary file, ``fsync`` and :func:`os.replace`.

    Args:
        dirname: folder of the checkpoints (created).
        filename: a fixed file name used for every save (MONAI's ``key_metric_filename`` /
            ``final_filename``); ``None`` keeps ignite's generated names.
        kwargs: ``torch.save`` keyword arguments.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False, **kwargs)
        self.filename = filename
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)
        while self._pending_removal:  # the new checkpoint is complete: now drop the old one
            old = self.dirname / self._pending_removal.pop(0)
            if idist.get_rank() == self.save_on_rank:
                old.unlink(missing_ok=True)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        def _write(tmp: Path) -> None:
            with tmp.open("wb") as stream:
                func(checkpoint, stream, **self.kwargs)
                stream.flush()
                os.fsync(stream.fileno())

        # mode: mkstemp creates 0600; checkpoints are shared like any output
        atomic_write(path, _write, mode=0o644, prefix=f".{path.name}{PARTIAL_MARK}", suffix="")
        _fsync_dir(self.dirname)

    def remove(self, filename: str) -> None:
        """Schedule an old checkpoint for deletion after the next complete save (ignite calls this
        just before saving); a fixed-name file is never deleted, the next save replaces it."""
        if self.filename is None:
            self._pending_removal.append(filename)

    def remove_partials(self) -> list[Path]:
        """Delete temporary files left in ``dirname`` by a killed save; returns them."""
        found = [p for p in self.dirname.glob(f".*{PARTIAL_MARK}*") if p.is_file()]
        for path in found:
            path.unlink(missing_ok=True)
        return found


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose files are written atomically.

    Same arguments and behaviour as MONAI's saver (see the module docstring for what changes); use
    it wherever a bundle used ``CheckpointSaver``::

        "checkpoint_saver": {"_target_": "scdl_monai.handlers.checkpoint.AtomicCheckpointSaver",
                             "save_dir": "@ckpt_dir", "save_dict": "@checkpoint_state", ...}

    Checkpoint files are plain ``torch.save`` zip archives; load them with
    ``torch.load(path, weights_only=True)`` (MONAI's ``CheckpointLoader`` does).
    """

    def __init__(self, save_dir: str, save_dict: dict, *args: Any, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, *args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, getattr(checkpoint.save_handler, "filename", None))

    def attach(self, engine: Engine) -> None:
        """Attach to ``engine`` and remove temporary files of a previously killed save."""
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                for path in checkpoint.save_handler.remove_partials():
                    self.logger.warning(f"removed incomplete checkpoint file of an interrupted save: {path}")
                break  # one folder
        super().attach(engine)

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        """MONAI saves a "final" checkpoint on any exception; not for a non-finite loss."""
        if isinstance(e, NonFiniteLossError):
            self.logger.error("not saving a final checkpoint: training stopped on a non-finite loss")
            raise e
        super().exception_raised(engine, e)


class FinalModelSaver:
    """At the end of training, write the network's weights to ``model.pt`` when no validation ran.

    The reference scripts keep the best validation model (e.g. ``xmed-lab/DHC:code/train_dhc.py``
    saves ``best_model.pth`` when the mean foreground Dice improves); the bundles do the same
    through the evaluator's ``save_key_metric`` saver. A run that ends before its first validation
    (``max_epochs < val_interval``) would leave no model at all: this handler then saves the final
    weights under the same name and in the same format (the bare ``state_dict``, as ignite's
    ``Checkpoint`` writes a single object), atomically.

    Args:
        save_dir: folder of ``filename`` (created).
        network: the module whose ``state_dict`` is saved (the bundles' ``inference_network``).
        validator: the evaluator run by ``ValidationHandler``; when it has run at least one
            iteration in this process, the key-metric saver owns ``filename`` and nothing is written.
            ``None``: always write.
        filename: file name in ``save_dir``.
        keep_existing: leave an existing ``filename`` alone (e.g. a resumed run whose earlier part
            already selected a model).

    Example:
        In a bundle's ``train.json`` (attached to the trainer in ``run``)::

            "final_model_saver": {"_target_": "scdl_monai.handlers.checkpoint.FinalModelSaver",
                                  "save_dir": "@ckpt_dir", "network": "@inference_network",
                                  "validator": "@validate#evaluator"}
    """

    def __init__(
        self,
        save_dir: str | Path,
        network: Any,
        validator: Engine | None = None,
        filename: str = "model.pt",
        keep_existing: bool = False,
    ) -> None:
        if not hasattr(network, "state_dict"):
            raise TypeError(f"FinalModelSaver: `network` must have a state_dict(), got {type(network).__name__}.")
        if not isinstance(filename, str) or not filename or os.sep in filename:
            raise ValueError(f"FinalModelSaver: `filename` must be a plain file name, got {filename!r}.")
        self.save_dir = Path(save_dir)
        self.network = network
        self.validator = validator
        self.filename = filename
        self.keep_existing = bool(keep_existing)
        self.saved: Path | None = None

    def attach(self, engine: Engine) -> None:
        """Run at ``Events.COMPLETED`` of ``engine`` (also fired after an early stop)."""
        engine.add_event_handler(Events.COMPLETED, self)

    def validation_ran(self) -> bool:
        """Whether the validator has run in this process."""
        return self.validator is not None and int(getattr(self.validator.state, "iteration", 0) or 0) > 0

    def __call__(self, engine: Engine) -> None:
        path = self.save_dir / self.filename
        if self.validation_ran() or (self.keep_existing and path.is_file()):
            return
        AtomicDiskSaver(self.save_dir, filename=self.filename)(self.network.state_dict(), self.filename)
        self.saved = path
        engine.logger.info(f"no validation ran: saved the final weights to {path}")


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint", missing: str = "raise") -> str:
    """Newest complete full-state checkpoint ``<ckpt_dir>/<prefix>*.pt`` (by modification time).

    Used by ``--resume true``. The bundles save through
    :class:`~scdl_monai.handlers.checkpoint.AtomicCheckpointSaver` (temporary file + rename), so a
    run killed while saving leaves no truncated ``*.pt``; checkpoints written by other tools (e.g.
    MONAI's plain ``CheckpointSaver``, which is not atomic) may be truncated: files that are not
    complete zip archives (the ``torch.save`` format) are skipped with a warning.

    Args:
        ckpt_dir: the checkpoint folder.
        prefix: file-name prefix of the full-state checkpoints.
        missing: when there is none: ``"raise"`` (default) a ``FileNotFoundError``, or
            ``"pattern"`` return the glob pattern ``<ckpt_dir>/<prefix>*.pt`` itself — what the
            bundles use, so that the start-up check (:func:`scdl_monai.engines.preflight.check_training`,
            key ``resume_from``) reports "file not found" in its one message instead of a traceback
            from inside the config expression.

    Raises:
        FileNotFoundError: when there is none and ``missing="raise"`` (naming the folder).
        ValueError: unknown ``missing``.
    """
    import warnings

    if missing not in ("raise", "pattern"):
        raise ValueError(f"latest_checkpoint: missing must be 'raise' or 'pattern', got {missing!r}.")
    import zipfile

    folder = Path(ckpt_dir)
    found = sorted(folder.glob(f"{prefix}*.pt"), key=lambda p: (p.stat().st_mtime_ns, p.name)) if folder.is_dir() else []
    for path in reversed(found):
        if zipfile.is_zipfile(path):
            return str(path)
        warnings.warn(f"resume: skipping incomplete checkpoint {path}", stacklevel=2)
    if missing == "pattern":
        return str(folder.resolve() / f"{prefix}*.pt")
    raise FileNotFoundError(f"resume: no checkpoint '{prefix}*.pt' in {folder.resolve()} (train first, or pass --resume_from PATH).")


def resume_checkpoint(ckpt_dir: str | Path, resume: bool | str = False, prefix: str = "checkpoint") -> str:
    """The bundles' ``resume_from``: ``""`` (start fresh) unless ``resume``, else the newest checkpoint.

    With ``resume`` and no checkpoint in ``ckpt_dir`` it returns the glob pattern
    ``<ckpt_dir>/<prefix>*.pt`` (:func:`latest_checkpoint` with ``missing="pattern"``), which the
    start-up check reports as "file not found" in its one message.

    Args:
        ckpt_dir: the checkpoint folder (``ckpt_dir`` of the bundle).
        resume: a bool, or its command-line spelling (``--resume true`` arrives as ``"true"``).
        prefix: file-name prefix of the full-state checkpoints.

    Raises:
        ValueError: ``resume`` is not a bool spelling.
    """
    if not as_flag(resume, "resume"):
        return ""
    return latest_checkpoint(ckpt_dir, prefix=prefix, missing="pattern")
