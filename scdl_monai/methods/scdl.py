"""SCDL as a plug-in around any semi-supervised method (Su et al., arXiv 2603.05202; METHODS.md §7).

:class:`SCDLMethod` decorates a ready baseline method (CPS, DHC, GA-CPS, MagicNet/GA-MagicNet...)
instead of forking it (ARCHITECTURE.md: "SCDL is a wrapper/plug-in, not a fork of each method"):

1. at construction it replaces the chosen student networks *inside* the base method by
   :class:`~scdl_monai.networks.scdl_network.SCDLNetwork` wrappers (one SCDL block per student, or
   ``A_only``); EMA copies of a wrapped network (MagicNet's teacher) are replaced by a copy of the
   wrapper, so the teacher receives the SCDL parameters by EMA as well;
2. every step it delegates to ``base.train_step`` while the wrappers record their training calls
   (:func:`~scdl_monai.networks.scdl_network.scdl_record`), then adds

   ``L = L_base + r(i)·Σ_nets (proxy_weight·(L_p2e + 0.1·L_e2p) + sac_weight·L_SAC)``

   with ``r(i) = min(1, (i + 1)/warmup_iters)`` the linear warm-up over training iterations
   (METHODS.md §7: 0.3, 0.1, ~1k iterations; the weights are not released).

Token weights (METHODS.md §7): labeled tokens (the first ``B_l`` samples of the call that saw the
labeled batch) get ground-truth class proportions; unlabeled tokens the sharpened detached
assignment (reference) or pseudo-label proportions. SAC anchors come from ground-truth-weighted
token averages of the normal forward (``feature_pool``, cheap default) or from class-masked labeled
images through the network's own encoder (``masked_image``, paper §2.2; no gradient, normalisation
and dropout layers in eval mode, so running statistics are untouched).

Which call is "the" call: the wrappers record only training calls made with gradients; the first
recorded call whose input starts with the labeled batch (``torch.equal`` on the first ``B_l``
images) is used — CPS/DHC/GA-CPS call each network once on ``cat(x_L, x_U)``, MagicNet's plain
forward is on the original batch while its cube passes use the backbone hooks directly (no prior,
not recorded). ``record_call=k`` picks the k-th recorded call instead.

Switching SCDL off: ``enabled=False`` wraps nothing (pure delegation). With ``proxy_weight =
sac_weight = 0`` and ``injection="none"`` the wrappers exist but their SCDL branch never runs and
the SCDL blocks are initialised from their own seed without touching the global RNG, so training
is bit-for-bit the baseline's (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.utils import look_up_option
from torch import nn

from scdl_monai.losses.scdl import (
    LOSS_FORMS,
    ProxyLoss,
    SACLoss,
    sac_anchors_feature_pool,
    sac_anchors_masked_image,
)
from scdl_monai.methods.base import MethodOutput, SemiSupervisedMethod
from scdl_monai.networks.scdl import token_weights_from_assignment, token_weights_from_labels, token_weights_from_pseudo_label
from scdl_monai.networks.scdl_network import (
    INJECTION_TARGETS,
    SCDLNetwork,
    SCDLRecord,
    scdl_param_groups,
    scdl_parameters,
    scdl_record,
)

__all__ = [
    "SCDLMethod",
    "SAC_MODES",
    "UNLABELED_WEIGHTS",
    "LABELED_PASSES",
    "warmup_factor",
    "add_scdl_param_groups",
    "scdl_inference_network",
]

#: SAC anchor sources (METHODS.md §7): cheap ``feature_pool`` (default) or the paper's ``masked_image``.
SAC_MODES = ("feature_pool", "masked_image")
#: Token weights of unlabeled tokens: sharpened assignment (reference) or pseudo-label proportions.
UNLABELED_WEIGHTS = ("assignment", "pseudo_label")
#: Source of the labeled tokens: the recorded call that saw the labeled batch, or an extra encoder pass.
LABELED_PASSES = ("recorded", "encoder")

_HOOKS = ("encode", "decode", "feature_channels", "decoder_channels")


def warmup_factor(iteration: int | torch.Tensor, warmup_iters: int) -> float | torch.Tensor:
    """Linear warm-up ``min(1, (iteration + 1)/warmup_iters)`` of the SCDL terms (1 when ``warmup_iters=0``).

    ``iteration`` is the 0-based index of the step being computed, so the first step already
    contributes ``1/warmup_iters`` and step ``warmup_iters − 1`` has the full weight.
    Works on python numbers and on tensors (no host sync).
    """
    if warmup_iters <= 0:
        return iteration * 0 + 1.0 if isinstance(iteration, torch.Tensor) else 1.0
    if isinstance(iteration, torch.Tensor):
        return ((iteration.float() + 1.0) / float(warmup_iters)).clamp(max=1.0)
    return min(1.0, (iteration + 1) / warmup_iters)


def _option(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise ValueError(f"SCDLMethod: `{name}` must be one of {tuple(choices)}, got {value!r}.")
    try:
        return look_up_option(value.lower(), choices)
    except ValueError as err:
        raise ValueError(f"SCDLMethod: invalid `{name}`={value!r}. {err}".strip()) from None


def _nonneg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"SCDLMethod: `{name}` must be a non-negative number, got {value!r}.")
    return float(value)


def _has_hooks(module) -> bool:
    return isinstance(module, nn.Module) and all(hasattr(module, h) for h in _HOOKS)


def _resolve(root: nn.Module, path: str) -> nn.Module:
    obj: Any = root
    for part in path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"SCDLMethod: `networks` entry {path!r}: {type(obj).__name__} has no attribute {part!r}.")
        obj = getattr(obj, part)
    return obj


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = _resolve(root, parent_path) if parent_path else root
    setattr(parent, name, module)


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class SCDLMethod(SemiSupervisedMethod):
    """Any :class:`~scdl_monai.methods.base.SemiSupervisedMethod` + SCDL (CDBA, priors, SAC).

    The wrapped method keeps its own networks, losses, schedules and inference network; this
    class only wraps its student networks and adds the SCDL terms (see the module docstring).
    Attributes it does not define are looked up on the base method (``method.teacher``,
    ``method.update_teacher()``, ``method.trackers()``...), so handlers written for the baseline
    keep working on the wrapped method.

    Args:
        base_method: the baseline, built as usual (before ``wrap_ddp``).
        num_classes: ``C`` (background included).
        networks: which networks get an SCDL block: ``"all"`` (default; every entry of
            ``base_method.network_names``; for a network without encode/decode hooks but with a
            ``.backbone`` that has them, e.g. MagicNet's student, its backbone), ``"A_only"`` (the
            first of those), or explicit dotted paths inside the base method
            (``["network_a"]``, ``["student.backbone"]``).
        token_source: ``"encoder"`` (default; encoder stage ``token_stage``) or ``"decoder_final"``.
        injection: one of ``"all_stages"`` (default, paper), ``"bottleneck"``, ``"head"``, ``"none"``.
        use_prior_at_inference: inject the prior in eval mode / in the inference network.
        proxy_weight: weight of the CDBA proxy loss ``L_p2e + e2p_weight·L_e2p`` (0.3, METHODS.md §7).
        sac_weight: weight of ``L_SAC`` (0.1, METHODS.md §7).
        warmup_iters: iterations of the linear warm-up of both weights (1000, METHODS.md §7);
            0 disables the warm-up. The step counter is the buffer ``scdl_iteration``.
        sac_mode: ``"feature_pool"`` (default) or ``"masked_image"``.
        token_weights_unlabeled: ``"assignment"`` (default, reference) or ``"pseudo_label"`` (the
            argmax of the same network's logits pooled to the token grid).
        p2e_form, e2p_form: ``"code"`` (default) or ``"paper"``, see :mod:`scdl_monai.losses.scdl`.
        e2p_weight: weight of E2P inside the proxy loss (reference 0.1).
        x_dim: token channels (reference 16).
        token_stage: encoder feature index for ``token_source="encoder"`` (3 = VNet ``x4``).
        token_pool: token down-sampling per axis (``None``: 1 for encoder tokens, 8 for decoder_final).
        scdl_kwargs: extra :class:`~scdl_monai.networks.scdl.SCDL` arguments (``z_dim`` 256,
            ``num_proxy_samples`` 50, temperatures, ``dropout``...).
        sac_include_background: also anchor the background proxy (it has one; default True).
        sac_eval_dropout: masked-image mode only: dropout layers in eval mode too (default True —
            the anchors are detached targets, dropout would only add noise; METHODS.md names only
            the normalisation layers).
        sac_chunk_size: masked images per encoder call (``None``: all at once).
        record_call: ``"match"`` (default, see module docstring) or the index of the recorded call.
        labeled_pass: where the labeled tokens come from: ``"auto"`` (default: the base method's
            class attribute ``scdl_labeled_pass``, else ``"recorded"``), ``"recorded"`` (the recorded
            call that saw the labeled batch) or ``"encoder"`` — an extra encoder-only pass of the
            labeled images through the wrapped network (:meth:`SCDLNetwork.encoder_scdl`; needs
            ``token_source="encoder"``). GenericSSL needs ``"encoder"``: its prior-carrying decoder
            D_θ only sees unlabeled images, the labeled images reach the shared encoder through
            D_ξ/D_ψ paths the wrapper does not intercept (METHODS.md §7: "GenericSSL: tokens from
            the shared encoder, inject into D_θ"). Unlabeled tokens still come from the recorded
            call on the unlabeled batch (D_θ's).
        init_seed: seed of the SCDL blocks' initialisation (network ``k`` uses ``init_seed + k``);
            ``None`` = ``torch.initial_seed()``. They are built inside ``torch.random.fork_rng`` so
            the global random stream (data order, augmentation, dropout) is the baseline's.
        enabled: ``False`` wraps nothing and adds nothing (the baseline itself).

    Buffers:
        scdl_iteration: number of steps taken (warm-up counter; saved, so resume is exact).

    Raises:
        TypeError: ``base_method`` is not a ``SemiSupervisedMethod``; a target network has no hooks.
        ValueError: bad options (named), a base method already wrapped for DDP, unknown network paths.

    Example:
        >>> from scdl_monai.methods.cps import CPS
        >>> from scdl_monai.networks.vnet import VNet
        >>> cps = CPS(VNet(out_channels=3, n_filters=4), VNet(out_channels=3, n_filters=4))
        >>> method = SCDLMethod(cps, num_classes=3, scdl_kwargs={"z_dim": 16, "num_proxy_samples": 4})
        >>> opt = torch.optim.SGD(method.param_groups(), lr=0.01, momentum=0.9, weight_decay=3e-5)
    """

    scdl_iteration: torch.Tensor

    def __init__(
        self,
        base_method: SemiSupervisedMethod,
        num_classes: int,
        networks: str | Sequence[str] = "all",
        token_source: str = "encoder",
        injection: str = "all_stages",
        use_prior_at_inference: bool = True,
        proxy_weight: float = 0.3,
        sac_weight: float = 0.1,
        warmup_iters: int = 1000,
        sac_mode: str = "feature_pool",
        token_weights_unlabeled: str = "assignment",
        p2e_form: str = "code",
        e2p_form: str = "code",
        e2p_weight: float = 0.1,
        x_dim: int = 16,
        token_stage: int = 3,
        token_pool: int | None = None,
        scdl_kwargs: Mapping | None = None,
        sac_include_background: bool = True,
        sac_eval_dropout: bool = True,
        sac_chunk_size: int | None = None,
        record_call: str | int = "match",
        init_seed: int | None = None,
        enabled: bool = True,
        labeled_pass: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(base_method, SemiSupervisedMethod):
            raise TypeError(f"SCDLMethod: `base_method` must be a SemiSupervisedMethod, got {type(base_method).__name__}.")
        if getattr(base_method, "_ddp_wrappers", None):
            raise ValueError("SCDLMethod: wrap the method with SCDL before `wrap_ddp` (call wrap_ddp on the SCDLMethod).")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"SCDLMethod: `num_classes` must be an int >= 2, got {num_classes!r}.")
        for key, flag in (
            ("enabled", enabled),
            ("use_prior_at_inference", use_prior_at_inference),
            ("sac_include_background", sac_include_background),
            ("sac_eval_dropout", sac_eval_dropout),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"SCDLMethod: `{key}` must be a bool, got {flag!r}.")
        if isinstance(warmup_iters, bool) or not isinstance(warmup_iters, int) or warmup_iters < 0:
            raise ValueError(f"SCDLMethod: `warmup_iters` must be an int >= 0, got {warmup_iters!r}.")
        if record_call != "match" and (isinstance(record_call, bool) or not isinstance(record_call, int) or record_call < 0):
            raise ValueError(f"SCDLMethod: `record_call` must be 'match' or an int >= 0, got {record_call!r}.")
        if init_seed is not None and (isinstance(init_seed, bool) or not isinstance(init_seed, int)):
            raise ValueError(f"SCDLMethod: `init_seed` must be an int or None, got {init_seed!r}.")

        self.base = base_method
        self.network_names = tuple(base_method.network_names)
        self.requires_unlabeled = bool(getattr(base_method, "requires_unlabeled", True))
        self.num_classes = num_classes
        self.enabled = enabled
        self.proxy_weight = _nonneg("proxy_weight", proxy_weight)
        self.sac_weight = _nonneg("sac_weight", sac_weight)
        self.warmup_iters = warmup_iters
        self.sac_mode = _option("sac_mode", sac_mode, SAC_MODES)
        self.token_weights_unlabeled = _option("token_weights_unlabeled", token_weights_unlabeled, UNLABELED_WEIGHTS)
        self.injection = _option("injection", injection, INJECTION_TARGETS)
        _option("p2e_form", p2e_form, LOSS_FORMS)
        _option("e2p_form", e2p_form, LOSS_FORMS)
        self.sac_include_background = sac_include_background
        self.sac_eval_dropout = sac_eval_dropout
        self.sac_chunk_size = sac_chunk_size
        self.record_call = record_call
        if labeled_pass == "auto":
            labeled_pass = getattr(base_method, "scdl_labeled_pass", "recorded")
        self.labeled_pass = _option("labeled_pass", labeled_pass, LABELED_PASSES)
        if self.labeled_pass == "encoder" and token_source != "encoder":
            raise ValueError("SCDLMethod: labeled_pass='encoder' needs token_source='encoder'.")
        self.proxy_loss = ProxyLoss(e2p_weight=_nonneg("e2p_weight", e2p_weight), p2e_form=p2e_form, e2p_form=e2p_form)
        self.sac_loss = SACLoss()
        self.register_buffer("scdl_iteration", torch.zeros((), dtype=torch.long))
        self.unsup_weight.copy_(base_method.unsup_weight)

        #: dotted paths (inside the base method) of the wrapped networks, in order
        self.targets: tuple[str, ...] = ()
        #: names of the base method's children replaced by copies of a wrapper (EMA teachers)
        self.ema_copies: tuple[str, ...] = ()
        if not enabled:
            return
        self.targets = self._target_paths(networks)
        seed = torch.initial_seed() if init_seed is None else init_seed
        originals = {}
        for k, path in enumerate(self.targets):
            backbone = _resolve(base_method, path)
            if isinstance(backbone, SCDLNetwork):
                raise ValueError(f"SCDLMethod: network {path!r} is already an SCDLNetwork.")
            # own seed, global stream untouched: the baseline's data order/augmentation stay identical
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed((seed + k) % 2**64)
                wrapper = SCDLNetwork(
                    backbone,
                    num_classes=num_classes,
                    token_source=token_source,
                    injection=injection,
                    use_prior_at_inference=use_prior_at_inference,
                    x_dim=x_dim,
                    token_stage=token_stage,
                    token_pool=token_pool,
                    scdl_kwargs=scdl_kwargs,
                )
            originals[path] = backbone
            _set(base_method, path, wrapper)
        self.ema_copies = self._replace_copies(originals)

    # ------------------------------------------------------------------ construction helpers
    def _target_paths(self, networks) -> tuple[str, ...]:
        base = self.base

        def default_path(name: str) -> str:
            net = getattr(base, name)
            if _has_hooks(net):
                return name
            if _has_hooks(getattr(net, "backbone", None)):
                return f"{name}.backbone"
            raise TypeError(
                f"SCDLMethod: network {name!r} ({type(net).__name__}) has no encode/decode hooks (nor a `.backbone` "
                "with them); SCDL needs a VNet-like backbone. Give `networks` as explicit paths."
            )

        if isinstance(networks, str):
            key = _option("networks", networks, ("all", "a_only"))
            names = self.network_names if key == "all" else self.network_names[:1]
            if not names:
                raise ValueError(f"SCDLMethod: {type(base).__name__} lists no `network_names` to wrap.")
            return tuple(default_path(n) for n in names)
        if not isinstance(networks, Sequence) or not networks or not all(isinstance(n, str) for n in networks):
            raise ValueError(f"SCDLMethod: `networks` must be 'all', 'A_only' or a list of dotted paths, got {networks!r}.")
        for path in networks:
            if not _has_hooks(_resolve(base, path)):
                raise TypeError(f"SCDLMethod: `networks` entry {path!r} has no encode/decode hooks.")
        if len(set(networks)) != len(networks):
            raise ValueError(f"SCDLMethod: `networks` has duplicates: {list(networks)}.")
        return tuple(networks)

    def _replace_copies(self, originals: Mapping[str, nn.Module]) -> tuple[str, ...]:
        """Replace frozen copies of a wrapped backbone among the base method's children (EMA teachers).

        A frozen child module (no parameter requires grad) that is not one of the base method's
        ``network_names``, of the same type as a wrapped backbone and with the same state_dict keys
        and shapes, is taken to be its EMA copy (MagicNet's ``teacher`` =
        ``deepcopy(student.backbone).requires_grad_(False)``); it becomes a frozen deep copy of the
        wrapper holding the teacher's own weights, so ``ema_update(teacher, student.backbone)``
        matches names again and the teacher gets the SCDL parameters by EMA too.
        """
        replaced = []
        roots = {p.split(".")[0] for p in self.targets}
        for name, child in list(self.base.named_children()):
            if name in roots or name in self.network_names:
                continue
            if any(p.requires_grad for p in child.parameters()):
                continue
            for path, original in originals.items():
                if type(child) is not type(original) or child is original:
                    continue
                mine, theirs = child.state_dict(), original.state_dict()
                if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
                    continue
                wrapper_copy = copy.deepcopy(_resolve(self.base, path))
                wrapper_copy.backbone.load_state_dict(child.state_dict())
                wrapper_copy.train(child.training)
                wrapper_copy.requires_grad_(False)
                setattr(self.base, name, wrapper_copy)
                replaced.append(name)
                break
        return tuple(replaced)

    # ------------------------------------------------------------------ delegation
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if base is None or name.startswith("_"):
                raise
            return getattr(base, name)

    def networks(self) -> dict[str, nn.Module]:
        """The base method's networks (wrapped ones are :class:`SCDLNetwork`)."""
        return self.base.networks()

    def net(self, name: str) -> nn.Module:
        return self.base.net(name)

    def wrap_ddp(self, **ddp_kwargs: Any) -> SCDLMethod:
        """Wrap the base method's networks for DDP (the SCDL blocks live inside them).

        With ``injection="none"`` the SCDL parameters reach the loss only through the recorded
        outputs, not through the logits DDP's forward returns, so ``find_unused_parameters=True``
        fails ("marked ready twice") and plain DDP finds them unused; ``static_graph=True`` is set
        by default in that case (the set of used parameters is the same every iteration).
        """
        if self.enabled and self.targets and self.injection == "none":
            ddp_kwargs.setdefault("static_graph", True)
        self.base.wrap_ddp(**ddp_kwargs)
        return self

    def set_unsup_weight(self, value: float | torch.Tensor) -> None:
        """Set the base method's unsupervised weight (the schedule handlers call this)."""
        self.base.set_unsup_weight(value)
        self.unsup_weight.fill_(float(value))

    def inference_network(self) -> nn.Module:
        """The base method's inference network, made of the wrapped networks (priors per config)."""
        return self.base.inference_network()

    def wrapped_networks(self) -> dict[str, SCDLNetwork]:
        """``{path: SCDLNetwork}`` of the students carrying an SCDL block (plain modules, not DDP)."""
        return {path: _resolve(self.base, path) for path in self.targets}

    def param_groups(self, scdl_weight_decay: float = 1e-4, scdl_options: Mapping | None = None) -> list[dict]:
        """Optimizer groups: baseline parameters, then SCDL parameters with weight decay 1e-4.

        See :func:`~scdl_monai.networks.scdl_network.scdl_param_groups` (paper §3.1, METHODS.md §7).
        """
        return scdl_param_groups(self, scdl_weight_decay=scdl_weight_decay, scdl_options=scdl_options)

    def warmup(self) -> torch.Tensor:
        """Warm-up factor of the step about to be computed (tensor, no host sync)."""
        return warmup_factor(self.scdl_iteration, self.warmup_iters)

    def extra_repr(self) -> str:
        return (
            f"targets={self.targets}, injection={self.injection!r}, proxy_weight={self.proxy_weight}, "
            f"sac_weight={self.sac_weight}, warmup_iters={self.warmup_iters}, sac_mode={self.sac_mode!r}"
        )

    # ------------------------------------------------------------------ training
    def forward(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None = None
    ) -> MethodOutput:
        """One step without an engine (same as :meth:`train_step`)."""
        return self.train_step(None, image_l, label_l, image_u)

    def train_step(
        self, engine: Any, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None
    ) -> MethodOutput:
        """The base method's step plus the warmed-up SCDL terms; advances ``scdl_iteration``.

        Returns:
            The base :class:`MethodOutput` with ``loss`` increased by the SCDL loss and ``terms``
            extended by ``loss_scdl`` (added total), ``loss_scdl_proxy`` and ``loss_scdl_sac``
            (weighted, warm-up included), the unweighted sums over networks ``scdl_p2e``,
            ``scdl_e2p``, ``scdl_sac`` and the factor ``scdl_warmup``.

        Raises:
            ValueError: no recorded call of a wrapped network saw the labeled batch.
        """
        if not self.enabled:
            return self.base.train_step(engine, image_l, label_l, image_u)
        ramp = self.warmup()
        if self.proxy_weight == 0.0 and self.sac_weight == 0.0:
            out = self.base.train_step(engine, image_l, label_l, image_u)
            zero = out.loss.detach().new_zeros(())
            terms = dict(out.terms)
            terms.update({k: zero for k in ("loss_scdl", "loss_scdl_proxy", "loss_scdl_sac", "scdl_p2e", "scdl_e2p", "scdl_sac")})
            terms["scdl_warmup"] = ramp.detach().clone()
            self.scdl_iteration.add_(1)
            return MethodOutput(out.loss, out.pred, terms)

        wrapped = self.wrapped_networks()
        with scdl_record(wrapped) as records:
            out = self.base.train_step(engine, image_l, label_l, image_u)
            sums = self._scdl_terms(wrapped, records, image_l, label_l, image_u)
        p2e, e2p, proxy, sac = sums
        loss_proxy = ramp * self.proxy_weight * proxy
        loss_sac = ramp * self.sac_weight * sac
        loss_scdl = loss_proxy + loss_sac
        terms = dict(out.terms)
        terms.update(
            {
                "loss_scdl": loss_scdl.detach(),
                "loss_scdl_proxy": loss_proxy.detach(),
                "loss_scdl_sac": loss_sac.detach(),
                "scdl_p2e": p2e.detach(),
                "scdl_e2p": e2p.detach(),
                "scdl_sac": sac.detach(),
                "scdl_warmup": ramp.detach().clone(),
            }
        )
        self.scdl_iteration.add_(1)
        return MethodOutput(out.loss + loss_scdl, out.pred, terms)

    def _select(
        self, path: str, calls: list[SCDLRecord], image_l: torch.Tensor, image_u: torch.Tensor | None
    ) -> tuple[SCDLRecord, SCDLRecord | None, int]:
        """(labeled call, unlabeled call or None, index of the first unlabeled sample in it)."""
        n_l = image_l.shape[0]
        if not calls:
            raise ValueError(
                f"SCDLMethod: network {path!r} made no training call with gradients during the step; "
                "nothing to compute the SCDL losses on."
            )
        if self.record_call != "match":
            if self.record_call >= len(calls):
                raise ValueError(
                    f"SCDLMethod: record_call={self.record_call} but network {path!r} made only {len(calls)} recorded calls."
                )
            call = calls[self.record_call]
            return call, (call if call.image.shape[0] > n_l else None), n_l
        plain_l = _plain(image_l)
        labeled = next(
            (c for c in calls if c.image.shape[0] >= n_l and torch.equal(_plain(c.image[:n_l]), plain_l)), None
        )
        if labeled is None:
            raise ValueError(
                f"SCDLMethod: none of the {len(calls)} recorded calls of network {path!r} starts with the labeled "
                "batch, so ground-truth token weights cannot be attributed; set `record_call` to the index of the "
                "call whose first B_l samples are the labeled images, or labeled_pass='encoder' for an extra "
                "encoder pass of the labeled images."
            )
        if labeled.image.shape[0] > n_l:
            return labeled, labeled, n_l
        unlabeled = self._select_unlabeled(path, calls, image_u)
        if unlabeled is not None:
            return labeled, unlabeled, 0
        return labeled, None, n_l

    @staticmethod
    def _select_unlabeled(path: str, calls: list[SCDLRecord], image_u: torch.Tensor | None) -> SCDLRecord | None:
        """The recorded call that starts with the unlabeled batch (``labeled_pass="encoder"``)."""
        if image_u is None:
            return None
        plain_u = _plain(image_u)
        n_u = plain_u.shape[0]
        return next((c for c in calls if c.image.shape[0] >= n_u and torch.equal(_plain(c.image[:n_u]), plain_u)), None)

    def _scdl_terms(self, wrapped, records, image_l, label_l, image_u):
        n_l = image_l.shape[0]
        weights_cache: dict[tuple, torch.Tensor] = {}
        p2e_sum = e2p_sum = proxy_sum = sac_sum = None
        for path, net in wrapped.items():
            if self.labeled_pass == "encoder":
                out_l = net.encoder_scdl(_plain(image_l))
                unlabeled, start = self._select_unlabeled(path, records[path], image_u), 0
            else:
                labeled, unlabeled, start = self._select(path, records[path], image_l, image_u)
                out_l = labeled.scdl
            grid = tuple(out_l.prior.shape[2:])
            if grid not in weights_cache:
                weights_cache[grid] = token_weights_from_labels(label_l, self.num_classes, grid).to(out_l.assignment.device)
            w_l = weights_cache[grid]

            parts = [(out_l, slice(0, n_l), w_l)]
            if unlabeled is not None:
                out_u = unlabeled.scdl
                sl = slice(start, None)
                if self.token_weights_unlabeled == "assignment":
                    w_u = token_weights_from_assignment(out_u.probs[sl], out_u.probs_p2e[sl])
                else:
                    w_u = token_weights_from_pseudo_label(unlabeled.logits[sl], grid).to(w_l.device)
                parts.append((out_u, sl, w_u))
            assignment = torch.cat([o.assignment[s] for o, s, _ in parts])
            similarity = torch.cat([o.similarity[s] for o, s, _ in parts])
            probs = torch.cat([o.probs[s] for o, s, _ in parts])
            weights = torch.cat([w.to(assignment.dtype) for _, _, w in parts])
            p2e, e2p = self.proxy_loss.terms(assignment, weights, similarity, probs)
            proxy = p2e + self.proxy_loss.e2p_weight * e2p

            if self.sac_weight > 0.0:
                sac = self._sac(net, out_l, w_l, image_l, label_l)
            else:
                sac = proxy.new_zeros(())
            p2e_sum = p2e if p2e_sum is None else p2e_sum + p2e
            e2p_sum = e2p if e2p_sum is None else e2p_sum + e2p
            proxy_sum = proxy if proxy_sum is None else proxy_sum + proxy
            sac_sum = sac if sac_sum is None else sac_sum + sac
        return p2e_sum, e2p_sum, proxy_sum, sac_sum

    def _sac(self, net: SCDLNetwork, out_l, w_l, image_l, label_l) -> torch.Tensor:
        if self.sac_mode == "feature_pool":
            anchors, present = sac_anchors_feature_pool(out_l.z[: image_l.shape[0]], w_l)
            if not self.sac_include_background:
                present = present.clone()
                present[0] = False
        else:
            anchors, present = sac_anchors_masked_image(
                net.token_embeddings,
                _plain(image_l),
                _plain(label_l),
                self.num_classes,
                modules=[net],
                include_background=self.sac_include_background,
                eval_dropout=self.sac_eval_dropout,
                chunk_size=self.sac_chunk_size,
            )
        return self.sac_loss(out_l.mu, anchors.to(out_l.mu.device), present)


def add_scdl_param_groups(
    optimizer: torch.optim.Optimizer,
    module: nn.Module,
    scdl_weight_decay: float = 1e-4,
    scdl_options: Mapping | None = None,
) -> torch.optim.Optimizer:
    """Put the SCDL parameters of ``module`` into their own group of an existing optimizer.

    The bundle overlay uses this so that one overlay works on every baseline whatever parameters
    its optimizer was given: the new group inherits the optimizer's type and defaults (learning
    rate, momentum 0.9, nesterov) and gets ``weight_decay=scdl_weight_decay`` (paper §3.1: 1e-4;
    METHODS.md §7). SCDL parameters the optimizer already holds (e.g. MagicNet's
    ``student.parameters()`` evaluated after the wrapping) are moved out of their group first;
    frozen ones (an EMA teacher's) are skipped. Calling it again is a no-op. Build the LR scheduler
    *after* this call (the overlay does it inside the scheduler's ``optimizer`` argument), so the
    new group follows the baseline's schedule.

    Args:
        optimizer: the baseline's (first) optimizer, not stepped yet.
        module: the :class:`SCDLMethod` (or any module holding :class:`SCDLNetwork` s).
        scdl_weight_decay: weight decay of the SCDL group.
        scdl_options: further options of the SCDL group (e.g. ``{"momentum": 0.9}``).

    Returns:
        ``optimizer`` (for chaining in a config expression).

    Raises:
        TypeError: ``optimizer`` is not a torch optimizer.
        ValueError: the optimizer has already taken steps (its state would not match).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"add_scdl_param_groups: `optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
    if isinstance(scdl_weight_decay, bool) or not isinstance(scdl_weight_decay, (int, float)) or scdl_weight_decay < 0:
        raise ValueError(f"add_scdl_param_groups: `scdl_weight_decay` must be a non-negative number, got {scdl_weight_decay!r}.")
    options = dict(scdl_options or {})
    if "params" in options:
        raise ValueError("add_scdl_param_groups: `scdl_options` must not contain 'params'.")
    if any(g.get("scdl", False) for g in optimizer.param_groups):
        return optimizer  # already added
    scdl = [p for p in scdl_parameters(module) if p.requires_grad]
    if not scdl:
        return optimizer
    scdl_ids = {id(p) for p in scdl}
    if optimizer.state:
        raise ValueError("add_scdl_param_groups: the optimizer has already been stepped; add the SCDL group before training.")
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in scdl_ids]
    # "scdl": True marks the group (saved with the optimizer state; makes this call idempotent)
    optimizer.add_param_group({"params": scdl, **options, "weight_decay": float(scdl_weight_decay), "scdl": True})
    return optimizer


def _hook_paths(module: nn.Module, prefix: str = "") -> list[str]:
    paths = []
    for name, child in module.named_children():
        if _has_hooks(child):
            paths.append(prefix + name)
        else:
            paths.extend(_hook_paths(child, f"{prefix}{name}."))
    return paths


def scdl_inference_network(network: nn.Module, num_classes: int, networks: str = "all", **wrapper_kwargs) -> nn.Module:
    """The standalone inference network of an SCDL bundle: the baseline's, with backbones wrapped.

    Mirrors what :class:`SCDLMethod` does to the training networks, so the state_dict saved from
    ``method.inference_network()`` loads strictly: a backbone with encode/decode hooks becomes an
    :class:`SCDLNetwork`; a container (e.g. CPS's ``LogitMean([A, B])``) gets each such backbone
    wrapped in place, in registration order (only the first with ``networks="A_only"``).

    Args:
        network: the baseline's inference network (``inference_network_def``).
        num_classes: ``C``.
        networks: ``"all"`` or ``"A_only"`` (as in :class:`SCDLMethod`).
        wrapper_kwargs: :class:`SCDLNetwork` arguments (token_source, injection,
            use_prior_at_inference, x_dim, token_stage, token_pool, scdl_kwargs) — the training values.

    Raises:
        TypeError: no backbone with encode/decode hooks in ``network``.
        ValueError: unknown ``networks``.
    """
    key = _option("networks", networks, ("all", "a_only"))
    if _has_hooks(network):
        return SCDLNetwork(network, num_classes=num_classes, **wrapper_kwargs)
    paths = _hook_paths(network)
    if not paths:
        raise TypeError(
            f"scdl_inference_network: {type(network).__name__} contains no backbone with encode/decode hooks to wrap."
        )
    for path in paths if key == "all" else paths[:1]:
        _set(network, path, SCDLNetwork(_resolve(network, path), num_classes=num_classes, **wrapper_kwargs))
    return network
