"""Semi-supervised training inside MONAI's Workflow API (docs/methods_engine.md).

MONAI and ignite have no trainer for two data streams. Here the labeled loader drives the
epochs (it is the ``data_loader`` ignite iterates) and the unlabeled loader is cycled by the
trainer itself; the algorithm lives in a :class:`~scdl_monai.methods.base.SemiSupervisedMethod`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines.trainer import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.engines.workflow import Workflow
from monai.transforms import Transform
from monai.utils import IgniteInfo, min_version, optional_import
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from scdl_monai.engines.keys import SSLKeys
from scdl_monai.methods.base import MethodOutput, SemiSupervisedMethod, plain_tensor
from scdl_monai.engines.precision import PrecisionPolicy, as_policy

if TYPE_CHECKING:
    from ignite.engine import Engine, EventEnum
    from ignite.metrics import Metric
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")
    EventEnum, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "EventEnum")

__all__ = ["SemiSupervisedTrainer"]

_AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _resolve_amp_dtype(amp_dtype: torch.dtype | str | None, device_type: str) -> torch.dtype:
    """Default autocast dtype: float16 on CUDA (with a GradScaler), bfloat16 elsewhere (CPU autocast)."""
    if amp_dtype is None:
        return torch.float16 if device_type == "cuda" else torch.bfloat16
    if isinstance(amp_dtype, torch.dtype):
        if amp_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"amp_dtype must be torch.float16 or torch.bfloat16, got {amp_dtype}.")
        return amp_dtype
    key = str(amp_dtype).lower().replace("torch.", "")
    if key not in _AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {sorted(_AMP_DTYPES)} or a torch dtype, got {amp_dtype!r}.")
    return _AMP_DTYPES[key]



def _length(loader) -> float:
    """``len(loader)``, or infinity for an iterable without a length."""
    try:
        return len(loader)
    except TypeError:
        return float("inf")


class SemiSupervisedTrainer(Trainer):
    """Trainer for semi-supervised (and supervised) methods with a labeled and an unlabeled stream.

    Each iteration (:meth:`_iteration`):

    1. ``prepare_batch`` the labeled batch (image, label) and the next unlabeled batch (image) to
       ``device``; the unlabeled iterator is re-created when exhausted (calling
       ``sampler.set_epoch(k)`` first when the sampler has it, e.g. ``DistributedSampler``;
       ``k`` counts the passes over the unlabeled loader from 0);
       the images are laid out channels-last when the precision policy says so;
    2. ``method.train()``; zero the gradients of every optimizer;
    3. ``method.train_step(engine, image_l, label_l, image_u)`` under the precision policy's
       autocast (:meth:`scdl_monai.engines.precision.PrecisionPolicy.autocast`: fp32, bf16, or fp16);
       fire ``IterationEvents.FORWARD_COMPLETED`` and ``LOSS_COMPLETED``;
    4. one backward through one ``torch.amp.GradScaler`` (enabled only for float16 on CUDA);
       ``BACKWARD_COMPLETED``; ``scaler.step`` every optimizer, ``scaler.update()``;
       ``MODEL_COMPLETED``.

    ``state.output`` = ``{"image", "label", "pred", "loss", <every named loss term>}`` (all but the
    inputs detached), so ``from_engine(["loss"], first=True)``, ``from_engine(["pred", "label"])``,
    StatsHandler, TensorBoardStatsHandler and MONAI metric handlers work unchanged.

    Epochs: ``epoch_length`` defaults to ``len(train_data_loader)``. A longer epoch cycles the
    labeled loader (ignite re-creates its iterator), e.g. ``epoch_length=len(unlabeled_loader)``
    reproduces the reference code's "labeled list repeated to the unlabeled length" epochs
    (docs/methods.md#shared-losses-and-schedules). Note: ignite does not call ``set_epoch`` when it restarts the labeled
    iterator inside an epoch (only at ``EPOCH_STARTED``), so a ``DistributedSampler`` on the
    labeled loader repeats its order within such an epoch.

    Resume: the position in the unlabeled stream (``state.unlabeled_epoch``,
    ``state.unlabeled_iteration``) is part of ``trainer.state_dict()``; after
    ``CheckpointLoader`` the trainer re-creates the unlabeled iterator with the saved sampler
    epoch and skips the batches already consumed (they are loaded, then dropped); when the saved
    position is the end of a pass (the usual ``epoch_length = len(unlabeled loader)`` at an epoch
    boundary) it starts the next pass directly, exactly as the uninterrupted run does. With the
    random state in the checkpoint too (:class:`~scdl_monai.engines.random_state.RandomStates`:
    shuffling, random crops and augmentations, dropout), resume at an epoch boundary is exact:
    ``tests/bundles/test_resume.py`` checks 2 epochs == 1 epoch + save + load + 1 epoch bit for bit
    for every method, with shuffling and random crops on. Mid-epoch resume is not exact (ignite's
    plain ``Engine`` restarts the labeled loader at the beginning of the epoch).

    Checkpoints: ``CheckpointSaver(save_dict={"method": ..., "optimizer_a": ..., "lr_a": ...,
    "scaler": trainer.scaler, "trainer": trainer})`` holds only tensors and plain Python values,
    which MONAI 1.6's ``CheckpointLoader`` reads with ``torch.load(..., weights_only=True)`` (it
    always does; no code is unpickled). Load any checkpoint yourself the same way.

    Precision (docs/performance.md): pass ``precision`` — a
    :class:`~scdl_monai.engines.precision.PrecisionPolicy`, a name ("fp32", "bf16", "fp16") or a dict of
    its arguments — to choose the precision and memory format in one place. It is resolved
    against ``device`` here (fallbacks such as fp16 on CPU → fp32 are logged), the method's
    networks are converted to channels-last once (``policy.prepare_module(method)``), the images
    of every batch are laid out to match, and ``train_step`` runs under ``policy.autocast()``.
    The MONAI-style ``amp``/``amp_dtype`` arguments still work and map to
    ``PrecisionPolicy.from_amp(amp, amp_dtype)`` when ``precision`` is None.

    CPU bf16: torch 2.13's oneDNN bf16 conv3d weight gradient is wrong (NaN or huge values,
    depending on recycled memory) for inputs smaller than the kernel along the first spatial
    axis, e.g. the VNet bottleneck; the policy's guard rewrites exactly those convolutions (axis
    swap in bf16, or fp32; see :mod:`scdl_monai.engines.precision`), so
    ``torch.backends.mkldnn.enabled = False`` is no longer needed.

    The trainer builds nothing: the method, optimizers and loaders come from the caller/config.
    The method must already be on ``device`` (and DDP-wrapped via ``method.wrap_ddp`` if needed).

    Args:
        device: device of the batches (``None``: leave batches where they are, CPU autocast).
        max_epochs: number of epochs.
        train_data_loader: labeled loader; drives epochs.
        unlabeled_data_loader: unlabeled loader (batches are dicts with ``"image"``), cycled; ``None``
            for supervised training (``image_u`` is then ``None``).
        method: the algorithm, a :class:`~scdl_monai.methods.base.SemiSupervisedMethod`.
        optimizer: one optimizer or a sequence of them (e.g. one per CPS network); all are zeroed
            and stepped every iteration. Available as ``engine.optimizers`` (a list) and
            ``engine.optimizer`` (the first one, for handlers that expect a single optimizer).
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking, prepare_batch, iteration_update, postprocessing, key_train_metric,
        additional_metrics, metric_cmp_fn, train_handlers, event_names, event_to_attr, decollate,
        to_kwargs: as in ``monai.engines.SupervisedTrainer``; ``prepare_batch`` is applied to both
            streams (for unlabeled dicts without ``"label"`` MONAI's default returns (image, None)).
        amp: enable mixed precision (ignored when ``precision`` is given).
        amp_dtype: autocast dtype (``torch.float16``/``torch.bfloat16`` or "float16"/"bfloat16");
            default float16 on CUDA, bfloat16 otherwise. ``engine.amp_dtype`` keeps this requested
            dtype; the dtype actually used is ``engine.precision.dtype`` (e.g. float16 on CPU
            falls back to float32, logged).
        optim_set_to_none: ``optimizer.zero_grad(set_to_none=...)``.
        amp_kwargs: extra ``torch.autocast`` keyword arguments (``dtype``/``enabled`` come from the policy).
        precision: the :class:`~scdl_monai.engines.precision.PrecisionPolicy` (or a precision name / dict);
            ``None`` = derived from ``amp``/``amp_dtype``. Available resolved as ``engine.precision``.

    Raises:
        TypeError: ``method`` is not a ``SemiSupervisedMethod``; an optimizer is not a
            ``torch.optim.Optimizer``.
        ValueError: no optimizer; bad ``amp_dtype`` or ``precision``; ``epoch_length`` not
            positive; an empty unlabeled loader (at the first iteration).
    """

    def __init__(
        self,
        device: str | torch.device | None,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        unlabeled_data_loader: Iterable | DataLoader | None,
        method: SemiSupervisedMethod,
        optimizer: Optimizer | Sequence[Optimizer],
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype | str | None = None,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        precision: PrecisionPolicy | str | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(method, SemiSupervisedMethod):
            raise TypeError(
                f"SemiSupervisedTrainer: method must be a SemiSupervisedMethod, got {type(method).__name__}."
            )
        optimizers = [optimizer] if isinstance(optimizer, Optimizer) else list(optimizer or [])
        if not optimizers:
            raise ValueError(
                "SemiSupervisedTrainer: optimizer must be an Optimizer or a non-empty list of them, got none."
            )
        for i, opt in enumerate(optimizers):
            if not isinstance(opt, Optimizer):
                raise TypeError(
                    f"SemiSupervisedTrainer: optimizer[{i}] must be a torch.optim.Optimizer, got {type(opt).__name__}."
                )
        if epoch_length is not None and int(epoch_length) < 1:
            raise ValueError(
                f"SemiSupervisedTrainer: epoch_length must be a positive integer or None, got {epoch_length}."
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.method = method
        self.optimizers = optimizers
        self.optimizer = optimizers[0]
        self.unlabeled_data_loader = unlabeled_data_loader
        self.optim_set_to_none = optim_set_to_none

        device_type = self.state.device.type if self.state.device is not None else "cpu"
        self.amp_device_type = device_type
        self.amp_dtype = _resolve_amp_dtype(amp_dtype, device_type)
        if precision is None:
            precision = PrecisionPolicy.from_amp(bool(amp), self.amp_dtype, device=device_type)
        # the one place where precision and memory format are decided (fallbacks are logged)
        self.precision = as_policy(precision, self.state.device if self.state.device is not None else "cpu")
        self.amp = self.precision.autocast_enabled
        self.precision.prepare_module(method)
        # dtype/enabled/device_type are decided by the policy, not through amp_kwargs
        self.amp_kwargs = {k: v for k, v in self.amp_kwargs.items() if k not in ("dtype", "enabled", "device_type")}
        # One scaler for all optimizers (the documented torch pattern for several optimizers).
        # Loss scaling only matters for float16 gradients on CUDA; elsewhere it is a pass-through.
        self.scaler = self.precision.grad_scaler()

        # position in the unlabeled stream, saved with the trainer for exact resume
        self.state.unlabeled_epoch = 0
        self.state.unlabeled_iteration = 0
        self.state_dict_user_keys.extend(["unlabeled_epoch", "unlabeled_iteration"])
        self._unlabeled_iter: Iterator | None = None

    # ------------------------------------------------------------------ running
    def run(self) -> None:  # type: ignore[override]
        """Train; calling again continues from the current state.

        ``monai.engines.Trainer.run`` would replace ``self.scaler`` by a CUDA-only scaler on every
        call; this keeps the one built in ``__init__`` (its state survives repeated runs).
        """
        Workflow.run(self)

    def load_state_dict(self, state_dict: Any) -> None:
        """ignite ``Engine.load_state_dict``; also forces the unlabeled iterator to re-synchronise."""
        super().load_state_dict(state_dict)
        self._unlabeled_iter = None

    def _new_unlabeled_iterator(self) -> Iterator:
        loader = self.unlabeled_data_loader
        sampler = getattr(loader, "sampler", None)
        if sampler is not None and callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(self.state.unlabeled_epoch)
        return iter(loader)  # type: ignore[arg-type]

    def next_unlabeled_batch(self) -> Any:
        """Next batch of the cycled unlabeled stream (``None`` without an unlabeled loader)."""
        if self.unlabeled_data_loader is None:
            return None
        if self._unlabeled_iter is None and self.state.unlabeled_iteration >= _length(self.unlabeled_data_loader):
            # resumed exactly at the end of a pass (epoch_length = len(unlabeled loader)): start the
            # next pass directly, as the uninterrupted run does, without re-reading the old one
            # (which would consume random numbers and break exact resume)
            self.state.unlabeled_epoch += 1
            self.state.unlabeled_iteration = 0
        if self._unlabeled_iter is None:
            # first use, or after load_state_dict: resume inside the current pass
            self._unlabeled_iter = self._new_unlabeled_iterator()
            for _ in range(self.state.unlabeled_iteration):
                try:
                    next(self._unlabeled_iter)
                except StopIteration:
                    self.state.unlabeled_iteration = 0
                    self.state.unlabeled_epoch += 1
                    self._unlabeled_iter = self._new_unlabeled_iterator()
                    break
        try:
            batch = next(self._unlabeled_iter)
        except StopIteration:
            self.state.unlabeled_epoch += 1
            self.state.unlabeled_iteration = 0
            self._unlabeled_iter = self._new_unlabeled_iterator()
            try:
                batch = next(self._unlabeled_iter)
            except StopIteration:
                raise ValueError(
                    "SemiSupervisedTrainer: unlabeled_data_loader yielded no batch (is it empty?)."
                ) from None
        self.state.unlabeled_iteration += 1
        return batch

    def _iteration(self, engine: SemiSupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One training iteration; returns ``engine.state.output`` (see the class docstring).

        Raises:
            ValueError: when ``batchdata`` is None or the labeled batch has no label.
        """
        if batchdata is None:
            raise ValueError("SemiSupervisedTrainer: must provide batch data for the current iteration.")
        device, nb, kw = engine.state.device, engine.non_blocking, engine.to_kwargs
        image_l, label_l = engine.prepare_batch(batchdata, device, nb, **kw)[:2]
        if label_l is None:
            raise ValueError(
                "SemiSupervisedTrainer: the labeled batch has no 'label' (train_data_loader must be labeled)."
            )
        batch_u = engine.next_unlabeled_batch()
        image_u = None if batch_u is None else engine.prepare_batch(batch_u, device, nb, **kw)[0]
        # Methods concatenate labeled and unlabeled batches (CPS: one forward on cat(L, U)); MetaTensor
        # refuses to batch tensors whose metadata differ, and training needs no metadata, so the
        # method always receives plain tensors (cached pipelines may keep track_meta for inversion).
        image_l, label_l, image_u = (plain_tensor(x) for x in (image_l, label_l, image_u))
        image_l, image_u = engine.precision.prepare_input(image_l), engine.precision.prepare_input(image_u)

        engine.state.output = {SSLKeys.IMAGE: image_l, SSLKeys.LABEL: label_l}
        engine.method.train()
        for opt in engine.optimizers:
            opt.zero_grad(set_to_none=engine.optim_set_to_none)

        with engine.precision.autocast(**engine.amp_kwargs):
            out = engine.method.train_step(engine, image_l, label_l, image_u)
        if not isinstance(out, MethodOutput):
            raise TypeError(
                f"{type(engine.method).__name__}.train_step must return a MethodOutput, got {type(out).__name__}."
            )
        engine.state.output[SSLKeys.PRED] = out.pred.detach().float()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[SSLKeys.LOSS] = out.loss.detach()
        for name, value in out.terms.items():
            engine.state.output[name] = value.detach() if isinstance(value, torch.Tensor) else value
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine.scaler.scale(out.loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        for opt in engine.optimizers:
            engine.scaler.step(opt)
        engine.scaler.update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
