"""SCDL as a plug-in around any semi-supervised method (Su et al., arXiv 2603.05202).

:class:`SCDLMethod` decorates a ready baseline method (CPS, DHC, GA-CPS, SimiS, CLD,
MagicNet/GA-MagicNet, GenericSSL; not SKCDF, whose training passes bypass the wrapper's hooks)
instead of forking it. The baseline is built as usual, except that the networks that
should carry SCDL are built around their backbones as
:class:`~scdl_monai.networks.prior_injection.SCDLNetwork` (in a bundle:
``scdl_monai.networks.prior_injection.wrap_backbone`` in the bundles' ``configs/scdl.json``); copies the
baseline makes of them (MagicNet's EMA teacher) are therefore copies of the wrapper. Every step
:class:`SCDLMethod` delegates to ``base.train_step`` while the wrappers record their training
decodings (:func:`~scdl_monai.networks.prior_injection.scdl_record`), then adds

``L = L_base + r(i)·Σ_nets (proxy_weight·(L_p2e + e2p_weight·L_e2p) + sac_weight·L_SAC)``

with ``r(i) = min(1, (i + 1)/W)`` the linear warm-up over training iterations, ``W`` =
``warmup_fraction`` of the run's iterations (``engine.state.max_epochs · epoch_length``) or an
explicit ``warmup_iters``. The SCDL loss weights and the warm-up are not published.

Which decoding is used: ``record_call`` (default 0) indexes each wrapped network's recorded
decodings of the step; the method passes the labeled batch size ``B_l`` explicitly and the
selected call's batch must be ``[B_l labeled | B_u unlabeled]`` (CPS, DHC, GA-CPS, SimiS and CLD
call each network once on ``cat(x_L, x_U)``; MagicNet's plain forward comes first, its cube passes after it) or,
with ``labeled_pass="encoder"`` (GenericSSL), the ``B_u`` unlabeled images only; the labeled
tokens then come from an extra encoder pass. Only shapes are compared (no data comparison, no
host synchronisation).

Token weights: labeled tokens get ground-truth class proportions. Unlabeled tokens
(``token_scope="all"``) get the sharpened detached self-assignment (``"assignment"``, released
``Zyh55555/SCDL:networks/SCDL.py`` ``bi_sim``), the network's own pseudo-label proportions
(``"pseudo_label"``) or the confident pseudo-label of the other network of a two-network method
(``"peer_pseudo_label"``, voxels with softmax confidence ≥ ``pseudo_label_threshold``; tokens
without a confident voxel are left out). SAC anchors come from ground-truth-weighted token
averages of the normal forward (``feature_pool``, cheap default) or from class-masked labeled
images through the network's own encoder (``masked_image``, paper §2.2; no gradient, normalisation
and dropout layers in eval mode, so running statistics are untouched).

Switching SCDL off: ``enabled=False`` adds nothing (pure delegation). With ``proxy_weight =
sac_weight = 0`` and ``injection="none"`` the wrappers exist but their SCDL branch never runs and
the SCDL blocks are initialised from their own seed without touching the global RNG, so training
is bit-for-bit the baseline's (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from scdl_monai.data.utils import check_number, look_up
from scdl_monai.losses.class_distribution_loss import (
    LOSS_FORMS,
    ProxyLoss,
    SACLoss,
    sac_anchors_feature_pool,
    sac_anchors_masked_image,
)
from scdl_monai.methods.base import MethodOutput, SemiSupervisedMethod, plain_tensor
from scdl_monai.networks.class_distribution import (
    token_weights_from_assignment,
    token_weights_from_confident_pseudo_label,
    token_weights_from_labels,
)
from scdl_monai.networks.prior_injection import (
    SCDLNetwork,
    SCDLRecord,
    scdl_param_groups,
    scdl_parameters,
    scdl_record,
    wrap_backbone,
)

__all__ = [
    "SCDLMethod",
    "SAC_MODES",
    "TOKEN_SCOPES",
    "UNLABELED_TARGETS",
    "LABELED_PASSES",
    "warmup_factor",
    "add_scdl_param_groups",
    "scdl_inference_network",
]

#: SAC anchor sources: cheap ``feature_pool`` (default) or the paper's ``masked_image``.
SAC_MODES = ("feature_pool", "masked_image")
#: Tokens of the proxy loss: labeled and unlabeled (``all``) or labeled only.
TOKEN_SCOPES = ("all", "labeled")
#: Targets of unlabeled tokens: sharpened self-assignment (reference), own or peer pseudo-labels.
UNLABELED_TARGETS = ("assignment", "pseudo_label", "peer_pseudo_label")
#: Source of the labeled tokens: the recorded call that saw the labeled batch, or an extra encoder pass.
LABELED_PASSES = ("recorded", "encoder")


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


def _resolve(root: nn.Module, path: str) -> nn.Module:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class SCDLMethod(SemiSupervisedMethod):
    """Any :class:`~scdl_monai.methods.base.SemiSupervisedMethod` + SCDL losses (CDBA, SAC).

    The wrapped method keeps its own networks, losses, schedules and inference network; this
    class adds the SCDL terms of the :class:`~scdl_monai.networks.prior_injection.SCDLNetwork` s
    found among the base method's networks (see the module docstring). Attributes it does not
    define are looked up on the base method (``method.teacher``, ``method.update_teacher()``,
    ``method.trackers()``...), so handlers written for the baseline keep working.

    Args:
        base_method: the baseline, built with (some of) its networks wrapped, before ``wrap_ddp``.
        num_classes: ``C``; ``None`` = the wrappers' (they must agree).
        networks: which of the base method's networks the config wrapped, checked here: ``"all"``
            (default: every network of ``network_names``) or ``"A_only"`` (the first one only).
        proxy_weight: weight of the CDBA proxy loss ``L_p2e + e2p_weight·L_e2p`` (default 0.3).
        sac_weight: weight of ``L_SAC`` (default 0.1).
        warmup_fraction: linear warm-up of both weights over this fraction of the run's
            iterations (``engine.state.max_epochs · engine.state.epoch_length``; default 0.06,
            about 1000 of the GA family's 17,000 iterations); 0 disables the warm-up.
        warmup_iters: explicit warm-up length in iterations (overrides ``warmup_fraction``; needed
            when the step is called without an engine). The step counter is the buffer
            ``scdl_iteration``.
        sac_mode: ``"feature_pool"`` (default) or ``"masked_image"``.
        token_scope: ``"all"`` (default; labeled and unlabeled tokens in the proxy loss) or
            ``"labeled"`` (labeled tokens only).
        unlabeled_target: ``"assignment"`` (default, reference), ``"pseudo_label"`` (the argmax of
            the same network's logits pooled to the token grid) or ``"peer_pseudo_label"`` (the
            other network's confident argmax; two-network methods only).
        pseudo_label_threshold: confidence threshold of ``"peer_pseudo_label"`` (default 0.9).
        balanced_p2e: class-balanced P2E, see :class:`~scdl_monai.losses.class_distribution_loss.P2ELoss`.
        p2e_form, e2p_form: ``"code"`` (default) or ``"paper"``.
        e2p_weight: weight of E2P inside the proxy loss (reference 0.1).
        sac_include_background: also anchor the background proxy (it has one; default True).
        sac_eval_dropout: masked-image mode only: dropout layers in eval mode too (default True —
            the anchors are detached targets, dropout would only add noise).
        sac_chunk_size: masked images per encoder call (``None``: all at once).
        record_call: index of the recorded decoding of each wrapped network that holds the
            (labeled +) unlabeled batch (default 0).
        labeled_pass: ``"auto"`` (default: the base method's class attribute
            ``scdl_labeled_pass``, else ``"recorded"``), ``"recorded"`` or ``"encoder"`` (an extra
            encoder-only pass of the labeled images, :meth:`SCDLNetwork.encoder_scdl`; GenericSSL,
            whose prior-carrying decoder D_θ sees unlabeled images only).
        enabled: ``False`` adds nothing (the baseline itself, wrapped networks included).

    Buffers:
        scdl_iteration: number of steps taken (warm-up counter; saved, so resume is exact).

    Raises:
        TypeError: ``base_method`` is not a ``SemiSupervisedMethod``.
        ValueError: bad options (named), a base method already wrapped for DDP, no wrapped network.

    Example:
        >>> from scdl_monai.methods.cps import CPS
        >>> from scdl_monai.networks.prior_injection import SCDLNetwork
        >>> from scdl_monai.networks.vnet import VNet
        >>> kw = {"num_classes": 3, "scdl_kwargs": {"z_dim": 16, "num_proxy_samples": 4}}
        >>> cps = CPS(SCDLNetwork(VNet(out_channels=3, n_filters=4), init_seed=1, **kw),
        ...           SCDLNetwork(VNet(out_channels=3, n_filters=4), init_seed=2, **kw))
        >>> method = SCDLMethod(cps, warmup_iters=100)
        >>> opt = torch.optim.SGD(method.param_groups(), lr=0.01, momentum=0.9, weight_decay=3e-5)
    """

    scdl_iteration: torch.Tensor

    def __init__(
        self,
        base_method: SemiSupervisedMethod,
        num_classes: int | None = None,
        networks: str = "all",
        proxy_weight: float = 0.3,
        sac_weight: float = 0.1,
        warmup_fraction: float = 0.06,
        warmup_iters: int | None = None,
        sac_mode: str = "feature_pool",
        token_scope: str = "all",
        unlabeled_target: str = "assignment",
        pseudo_label_threshold: float = 0.9,
        balanced_p2e: bool = False,
        p2e_form: str = "code",
        e2p_form: str = "code",
        e2p_weight: float = 0.1,
        sac_include_background: bool = True,
        sac_eval_dropout: bool = True,
        sac_chunk_size: int | None = None,
        record_call: int = 0,
        labeled_pass: str = "auto",
        enabled: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(base_method, SemiSupervisedMethod):
            raise TypeError(f"SCDLMethod: `base_method` must be a SemiSupervisedMethod, got {type(base_method).__name__}.")
        if getattr(base_method, "_ddp_wrappers", None):
            raise ValueError("SCDLMethod: wrap the method with SCDL before `wrap_ddp` (call wrap_ddp on the SCDLMethod).")
        for key, flag in (
            ("enabled", enabled),
            ("balanced_p2e", balanced_p2e),
            ("sac_include_background", sac_include_background),
            ("sac_eval_dropout", sac_eval_dropout),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"SCDLMethod: `{key}` must be a bool, got {flag!r}.")
        if isinstance(warmup_fraction, bool) or not isinstance(warmup_fraction, (int, float)) or not 0 <= warmup_fraction <= 1:
            raise ValueError(f"SCDLMethod: `warmup_fraction` must be a number in [0, 1], got {warmup_fraction!r}.")
        if warmup_iters is not None and (isinstance(warmup_iters, bool) or not isinstance(warmup_iters, int) or warmup_iters < 0):
            raise ValueError(f"SCDLMethod: `warmup_iters` must be an int >= 0 or None, got {warmup_iters!r}.")
        check_number(record_call, "record_call", "SCDLMethod", integer=True)
        threshold = check_number(pseudo_label_threshold, "pseudo_label_threshold", "SCDLMethod")
        if threshold > 1:
            raise ValueError(f"SCDLMethod: `pseudo_label_threshold` must be in [0, 1], got {pseudo_label_threshold!r}.")

        self.base = base_method
        self.network_names = tuple(base_method.network_names)
        self.requires_unlabeled = bool(getattr(base_method, "requires_unlabeled", True))
        self.enabled = enabled
        self.proxy_weight = check_number(proxy_weight, "proxy_weight", "SCDLMethod")
        self.sac_weight = check_number(sac_weight, "sac_weight", "SCDLMethod")
        self.warmup_fraction = float(warmup_fraction)
        self.warmup_iters = warmup_iters
        self.sac_mode = look_up(sac_mode, SAC_MODES, "sac_mode", "SCDLMethod")
        self.token_scope = look_up(token_scope, TOKEN_SCOPES, "token_scope", "SCDLMethod")
        self.unlabeled_target = look_up(unlabeled_target, UNLABELED_TARGETS, "unlabeled_target", "SCDLMethod")
        self.pseudo_label_threshold = threshold
        look_up(p2e_form, LOSS_FORMS, "p2e_form", "SCDLMethod")
        look_up(e2p_form, LOSS_FORMS, "e2p_form", "SCDLMethod")
        if balanced_p2e and p2e_form.lower() != "code":
            raise ValueError("SCDLMethod: `balanced_p2e` needs p2e_form='code'.")
        self.sac_include_background = sac_include_background
        self.sac_eval_dropout = sac_eval_dropout
        self.sac_chunk_size = sac_chunk_size
        self.record_call = record_call
        if labeled_pass == "auto":
            labeled_pass = getattr(base_method, "scdl_labeled_pass", "recorded")
        self.labeled_pass = look_up(labeled_pass, LABELED_PASSES, "labeled_pass", "SCDLMethod")
        self.proxy_loss = ProxyLoss(
            e2p_weight=check_number(e2p_weight, "e2p_weight", "SCDLMethod"),
            p2e_form=p2e_form,
            e2p_form=e2p_form,
            balanced_p2e=balanced_p2e,
        )
        self.sac_loss = SACLoss()
        self.register_buffer("scdl_iteration", torch.zeros((), dtype=torch.long))
        self.unsup_weight.copy_(base_method.unsup_weight)

        #: dotted paths (inside the base method) of the SCDLNetworks among its networks, in order
        self.targets: tuple[str, ...] = self._find_targets()
        #: for each target path, the name of the other network of a two-network method (peer targets)
        self.peers: dict[str, str] = {}
        if not enabled:
            return
        if not self.targets:
            raise ValueError(
                f"SCDLMethod: none of the networks {self.network_names} of {type(base_method).__name__} is an "
                "SCDLNetwork; build them around their backbones with scdl_monai.networks.prior_injection.wrap_backbone."
            )
        all_networks = look_up(networks, ("all", "a_only"), "networks", "SCDLMethod") == "all"
        expected = self.network_names if all_networks else self.network_names[:1]
        roots = tuple(p.split(".")[0] for p in self.targets)
        if roots != tuple(expected):
            raise ValueError(
                f"SCDLMethod: networks={networks!r} expects SCDL wrappers on {list(expected)}, but {list(roots)} "
                "carry one; build the networks with the same `networks` setting."
            )
        classes = {self.wrapped_networks()[p].num_classes for p in self.targets}
        if num_classes is not None and {num_classes} != classes:
            raise ValueError(f"SCDLMethod: `num_classes`={num_classes!r} differs from the SCDL blocks' {sorted(classes)}.")
        if len(classes) != 1:
            raise ValueError(f"SCDLMethod: the SCDL blocks disagree on num_classes: {sorted(classes)}.")
        self.num_classes = classes.pop()
        if self.labeled_pass == "encoder":
            bad = [p for p in self.targets if self.wrapped_networks()[p].token_source != "encoder"]
            if bad:
                raise ValueError(f"SCDLMethod: labeled_pass='encoder' needs token_source='encoder' ({bad}).")
        if self.unlabeled_target == "peer_pseudo_label":
            if len(self.network_names) != 2:
                raise ValueError(
                    f"SCDLMethod: unlabeled_target='peer_pseudo_label' needs a method with two networks, "
                    f"{type(base_method).__name__} has {self.network_names}."
                )
            for path in self.targets:
                root = path.split(".")[0]
                self.peers[path] = next(n for n in self.network_names if n != root)

    # ------------------------------------------------------------------ construction helpers
    def _find_targets(self) -> tuple[str, ...]:
        """Paths of the SCDLNetworks inside the base method's networks (at most one per network)."""
        targets = []
        for name in self.network_names:
            found = [f"{name}.{p}" if p else name for p, m in getattr(self.base, name).named_modules() if isinstance(m, SCDLNetwork)]
            if len(found) > 1:
                raise ValueError(f"SCDLMethod: network {name!r} holds several SCDLNetworks {found}; expected at most one.")
            targets.extend(found)
        return tuple(targets)

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
        """The base method's networks (wrapped ones are or hold an :class:`SCDLNetwork`)."""
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
        if self.enabled and any(net.injection == "none" for net in self.wrapped_networks().values()):
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
        """``{path: SCDLNetwork}`` of the networks carrying an SCDL block (plain modules, not DDP)."""
        return {path: _resolve(self.base, path) for path in self.targets}

    def param_groups(self, scdl_weight_decay: float = 1e-4, scdl_options: Mapping | None = None) -> list[dict]:
        """Optimizer groups: baseline parameters, then SCDL parameters with weight decay 1e-4.

        See :func:`~scdl_monai.networks.prior_injection.scdl_param_groups` (paper §3.1).
        """
        return scdl_param_groups(self, scdl_weight_decay=scdl_weight_decay, scdl_options=scdl_options)

    def warmup_length(self, engine: Any = None) -> int:
        """Warm-up length in iterations: ``warmup_iters``, else ``warmup_fraction`` of the engine's run.

        Raises:
            ValueError: neither ``warmup_iters`` nor an engine with ``max_epochs``/``epoch_length``.
        """
        if self.warmup_iters is not None:
            return self.warmup_iters
        if self.warmup_fraction == 0.0:
            return 0
        state = getattr(engine, "state", None)
        max_epochs, epoch_length = getattr(state, "max_epochs", None), getattr(state, "epoch_length", None)
        if not max_epochs or not epoch_length:
            raise ValueError(
                "SCDLMethod: the warm-up is a fraction of the run (`warmup_fraction`), which needs the engine's "
                "max_epochs and epoch_length; pass `warmup_iters` when calling the step without an engine."
            )
        return max(1, round(self.warmup_fraction * int(max_epochs) * int(epoch_length)))

    def warmup(self, engine: Any = None) -> torch.Tensor:
        """Warm-up factor of the step about to be computed (tensor, no host sync)."""
        return warmup_factor(self.scdl_iteration, self.warmup_length(engine))

    def extra_repr(self) -> str:
        return (
            f"targets={self.targets}, proxy_weight={self.proxy_weight}, sac_weight={self.sac_weight}, "
            f"warmup_fraction={self.warmup_fraction}, warmup_iters={self.warmup_iters}, sac_mode={self.sac_mode!r}, "
            f"token_scope={self.token_scope!r}, unlabeled_target={self.unlabeled_target!r}"
        )

    # ------------------------------------------------------------------ training
    def forward(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None = None
    ) -> MethodOutput:
        """One step without an engine (same as :meth:`train_step`; needs ``warmup_iters``)."""
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
            ValueError: the selected recorded call does not hold the batch layout described in the
                module docstring.
        """
        if not self.enabled:
            return self.base.train_step(engine, image_l, label_l, image_u)
        ramp = self.warmup(engine)
        if self.proxy_weight == 0.0 and self.sac_weight == 0.0:
            out = self.base.train_step(engine, image_l, label_l, image_u)
            zero = out.loss.detach().new_zeros(())
            terms = dict(out.terms)
            terms.update({k: zero for k in ("loss_scdl", "loss_scdl_proxy", "loss_scdl_sac", "scdl_p2e", "scdl_e2p", "scdl_sac")})
            terms["scdl_warmup"] = ramp.detach().clone()
            self.scdl_iteration.add_(1)
            return MethodOutput(out.loss, out.pred, terms)

        wrapped = self.wrapped_networks()
        with scdl_record(wrapped) as records, self._peer_logits() as peer_calls:
            out = self.base.train_step(engine, image_l, label_l, image_u)
        p2e, e2p, proxy, sac = self._scdl_terms(wrapped, records, peer_calls, image_l, label_l, image_u)
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

    @contextmanager
    def _peer_logits(self):
        """``{peer name: [logits of its training calls with gradients]}`` while the step runs."""
        calls: dict[str, list[torch.Tensor]] = {}
        handles = []
        if self.unlabeled_target == "peer_pseudo_label" and self.token_scope == "all":
            for name in sorted(set(self.peers.values())):
                calls[name] = []

                def hook(module, args, output, store=calls[name]):
                    if module.training and torch.is_grad_enabled():
                        store.append(output.detach())

                handles.append(getattr(self.base, name).register_forward_hook(hook))
        try:
            yield calls
        finally:
            for handle in handles:
                handle.remove()

    def _call(self, path: str, calls: list, what: str):
        if self.record_call >= len(calls):
            raise ValueError(
                f"SCDLMethod: record_call={self.record_call} but network {path!r} made {len(calls)} training "
                f"{what} with gradients during the step."
            )
        return calls[self.record_call]

    def _split(
        self, path: str, calls: list[SCDLRecord], n_l: int, n_u: int
    ) -> tuple[SCDLRecord | None, SCDLRecord | None, int]:
        """(call with the labeled samples first or None, call with the unlabeled ones or None, first unlabeled index)."""
        call = self._call(path, calls, "decodings")
        batch = call.logits.shape[0]
        if self.labeled_pass == "encoder":
            if batch != n_u:
                raise ValueError(
                    f"SCDLMethod: labeled_pass='encoder' expects recorded call {self.record_call} of {path!r} to "
                    f"hold the {n_u} unlabeled images, got a batch of {batch}."
                )
            return None, call, 0
        if batch == n_l:
            return call, None, n_l
        if batch == n_l + n_u:
            return call, call, n_l
        raise ValueError(
            f"SCDLMethod: recorded call {self.record_call} of {path!r} has a batch of {batch}, not the labeled "
            f"{n_l} (+ unlabeled {n_u}) images, so ground-truth token weights cannot be attributed; set "
            "`record_call` to the call on cat(x_L, x_U), or labeled_pass='encoder' for an extra encoder pass "
            "of the labeled images."
        )

    def _unlabeled_weights(self, path, out_u, logits_u, peer_calls, grid, sl):
        if self.unlabeled_target == "assignment":
            return token_weights_from_assignment(out_u.probs[sl], out_u.probs_p2e[sl]), None
        if self.unlabeled_target == "pseudo_label":
            return token_weights_from_confident_pseudo_label(logits_u[sl], grid, 0.0)[0], None
        peer = self.peers[path]
        peer_logits = self._call(peer, peer_calls[peer], "calls")
        if peer_logits.shape[0] != logits_u.shape[0]:
            raise ValueError(
                f"SCDLMethod: the peer {peer!r} call {self.record_call} has a batch of {peer_logits.shape[0]}, "
                f"network {path!r} one of {logits_u.shape[0]}; they must see the same images."
            )
        return token_weights_from_confident_pseudo_label(peer_logits[sl], grid, self.pseudo_label_threshold)

    def _scdl_terms(self, wrapped, records, peer_calls, image_l, label_l, image_u):
        n_l = image_l.shape[0]
        n_u = 0 if image_u is None else image_u.shape[0]
        weights_cache: dict[tuple, torch.Tensor] = {}
        p2e_sum = e2p_sum = proxy_sum = sac_sum = None
        for path, net in wrapped.items():
            labeled, unlabeled, start = self._split(path, records[path], n_l, n_u)
            out_l = net.encoder_scdl(plain_tensor(image_l)) if labeled is None else labeled.scdl
            grid = tuple(out_l.prior.shape[2:])
            if grid not in weights_cache:
                weights_cache[grid] = token_weights_from_labels(label_l, self.num_classes, grid).to(out_l.assignment.device)
            w_l = weights_cache[grid]

            parts = [(out_l, slice(0, n_l), w_l, None)]
            if unlabeled is not None and self.token_scope == "all":
                sl = slice(start, None)
                w_u, mask_u = self._unlabeled_weights(path, unlabeled.scdl, unlabeled.logits, peer_calls, grid, sl)
                parts.append((unlabeled.scdl, sl, w_u.to(w_l.device), mask_u))
            assignment = torch.cat([o.assignment[s] for o, s, _, _ in parts])
            similarity = torch.cat([o.similarity[s] for o, s, _, _ in parts])
            probs = torch.cat([o.probs[s] for o, s, _, _ in parts])
            weights = torch.cat([w.to(assignment.dtype) for _, _, w, _ in parts])
            mask = None
            if any(m is not None for _, _, _, m in parts):
                mask = torch.cat(
                    [m.to(assignment.device) if m is not None else w.new_ones(w.shape[:-1], dtype=torch.bool) for _, _, w, m in parts]
                )
            p2e, e2p = self.proxy_loss.terms(assignment, weights, similarity, probs, mask)
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
                plain_tensor(image_l),
                plain_tensor(label_l),
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
    scdl_lr_factor: float = 1.0,
) -> torch.optim.Optimizer:
    """Put the SCDL parameters of ``module`` into their own group of an existing optimizer.

    The bundle overlay uses this so that one overlay works on every baseline whatever parameters
    its optimizer was given: the new group inherits the optimizer's type and defaults (learning
    rate, momentum 0.9, nesterov) and gets ``weight_decay=scdl_weight_decay`` (paper §3.1: 1e-4)
    and ``lr = scdl_lr_factor`` × the optimizer's learning rate (paper §3.1: the baseline's settings,
    factor 1). SCDL parameters the optimizer already holds (e.g. MagicNet's
    ``student.parameters()`` evaluated after the wrapping) are moved out of their group first;
    frozen ones (an EMA teacher's) are skipped. Calling it again is a no-op. Build the LR scheduler
    *after* this call (the overlay does it inside the scheduler's ``optimizer`` argument), so the
    new group follows the baseline's schedule.

    Args:
        optimizer: the baseline's (first) optimizer, not stepped yet.
        module: the :class:`SCDLMethod` (or any module holding :class:`SCDLNetwork` s).
        scdl_weight_decay: weight decay of the SCDL group.
        scdl_options: further options of the SCDL group (e.g. ``{"momentum": 0.9}``).
        scdl_lr_factor: the SCDL group's learning rate relative to the optimizer's (an LR scheduler
            built afterwards scales it like every other group).

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
    check_number(scdl_lr_factor, "scdl_lr_factor", "add_scdl_param_groups", strict=True)
    options = dict(scdl_options or {})
    if "params" in options:
        raise ValueError("add_scdl_param_groups: `scdl_options` must not contain 'params'.")
    if scdl_lr_factor != 1.0 or "lr" in options:
        options["lr"] = float(options.get("lr", optimizer.defaults["lr"])) * float(scdl_lr_factor)
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


def _backbone_paths(module: nn.Module, prefix: str = "") -> list[str]:
    """Dotted paths of the encoder/decoder backbones inside ``module`` (registration order)."""
    paths = []
    for name, child in module.named_children():
        if all(hasattr(child, h) for h in ("encode", "decode", "feature_channels", "decoder_channels")):
            paths.append(prefix + name)
        else:
            paths.extend(_backbone_paths(child, f"{prefix}{name}."))
    return paths


def scdl_inference_network(network: nn.Module, networks: str = "all", **wrapper_kwargs) -> nn.Module:
    """The standalone inference network of an SCDL bundle: the baseline's, with backbones wrapped.

    Mirrors what the training config builds, so the state_dict saved from
    ``method.inference_network()`` loads strictly: a backbone with encode/decode hooks becomes an
    SCDL wrapper (:func:`~scdl_monai.networks.prior_injection.wrap_backbone`); a container (e.g.
    CPS's ``LogitMean([A, B])``) gets each such backbone wrapped in place, in registration order
    (only the first with ``networks="A_only"``).

    Args:
        network: the baseline's inference network (``inference_network_def``).
        networks: ``"all"`` or ``"A_only"``.
        wrapper_kwargs: :class:`~scdl_monai.networks.prior_injection.SCDLNetwork` arguments
            (num_classes, token_source, injection, use_prior_at_inference, x_dim, token_stage,
            token_pool, detach_prior, scdl_kwargs) — the training values.

    Raises:
        TypeError: no backbone with encode/decode hooks in ``network``.
        ValueError: unknown ``networks``.
    """
    key = look_up(networks, ("all", "a_only"), "networks", "SCDLMethod")
    if all(hasattr(network, h) for h in ("encode", "decode", "feature_channels", "decoder_channels")):
        return wrap_backbone(network, **wrapper_kwargs)
    paths = _backbone_paths(network)
    if not paths:
        raise TypeError(
            f"scdl_inference_network: {type(network).__name__} contains no backbone with encode/decode hooks to wrap."
        )
    for path in paths if key == "all" else paths[:1]:
        parent_path, _, name = path.rpartition(".")
        parent = _resolve(network, parent_path) if parent_path else network
        setattr(parent, name, wrap_backbone(_resolve(network, path), **wrapper_kwargs))
    return network
