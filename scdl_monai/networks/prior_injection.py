"""A segmentation network with an SCDL branch: tokens → class distributions → decoder priors.

:class:`SCDLNetwork` wraps any backbone that exposes the encoder/decoder hooks of
:class:`~scdl_monai.networks.vnet.VNet` (``encode(x) -> [x1..x5]``,
``decode(features, injection=None) -> (logits, last_feature)``, ``feature_channels``,
``decoder_channels`` and, for head injection, ``head``) and keeps its contract:
``forward(x) -> logits``. A method written for a plain network therefore runs unchanged on the
wrapper (SCDL as a plug-in, ARCHITECTURE.md); the SCDL outputs a training step needs for its
losses are *recorded* on the wrapper while a :func:`scdl_record` context is open, instead of being
returned.

Data flow of one call (METHODS.md §7; Su et al., arXiv 2603.05202, §2.1):

* ``token_source="encoder"`` (paper: tokens are encoder embeddings; required when the prior is
  injected before or inside the decoder): ``features = encode(x)``; tokens = 1×1 conv of
  ``features[token_stage]`` (VNet ``x4``, already at patch/8) to ``x_dim``; ``SCDL(tokens)``; the
  prior is projected and added at the injection target; ``decode``.
* ``token_source="decoder_final"`` (released inference code ``Zyh55555/SCDL:
  inference_Synapse_MagicNet.py``): decode first, pool the last decoder feature to patch/8, run
  ``SCDL``; only ``injection="head"`` or ``"none"`` are possible (the prior exists only after
  decoding).

Injection targets (each adds ``project_prior(prior)`` — bias-free 1×1 conv, linear resize):

==============  ==============================================================================
``all_stages``  every decoder stage, after its skip-sum (paper §2.1; default); ``decode(...,
                injection=[...])``
``bottleneck``  the bottleneck ``x5`` before decoding (released ``networks/magicnet_SCDL_prior5.py``)
``head``        the last decoder feature before the 1×1 head (released MagicNet inference)
``none``        no prior; SCDL only shapes the features through its losses (released CPS inference)
==============  ==============================================================================

Whenever a call needs no SCDL output (no injection in this mode and nothing recording) the wrapper
calls ``backbone(x)`` itself, so the result is bit-for-bit the baseline's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

import torch
from monai.utils import look_up_option
from torch import nn

from scdl_monai.networks.scdl import SCDL, TOKEN_SOURCES, SCDLOutput, TokenExtractor

__all__ = [
    "SCDLNetwork",
    "SCDLRecord",
    "INJECTION_TARGETS",
    "scdl_record",
    "scdl_parameters",
    "scdl_param_groups",
]

#: Where the prior is added (METHODS.md §7 "Injection"); ``all_stages`` is the paper's default.
INJECTION_TARGETS = ("all_stages", "bottleneck", "head", "none")


class SCDLRecord(NamedTuple):
    """One recorded training call of an :class:`SCDLNetwork`.

    Attributes:
        image: the input ``x`` of the call, ``(B, C_in, *spatial)`` (a reference, not a copy); used
            to find the call that saw the labeled batch.
        logits: the returned logits ``(B, C, *spatial)`` (for pseudo-label token weights).
        scdl: the :class:`~scdl_monai.networks.scdl.SCDLOutput` of the call (token grid =
            ``scdl.prior.shape[2:]``).
    """

    image: torch.Tensor
    logits: torch.Tensor
    scdl: SCDLOutput


def _choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise ValueError(f"SCDLNetwork: `{name}` must be one of {tuple(choices)}, got {value!r}.")
    try:
        return look_up_option(value.lower(), choices)
    except ValueError as err:
        raise ValueError(f"SCDLNetwork: invalid `{name}`={value!r}. {err}".strip()) from None


class SCDLNetwork(nn.Module):
    """Backbone + :class:`~scdl_monai.networks.scdl.SCDL` branch with prior injection.

    ``forward(x)`` returns logits ``(B, C, *spatial)`` like the backbone. In training mode with
    gradients enabled and recording switched on (:meth:`recording` / :func:`scdl_record`), every
    call appends an :class:`SCDLRecord` to the open record list; the method that owns the network
    computes the SCDL losses from it (``scdl_monai.methods.scdl.SCDLMethod``).

    Priors at inference: in eval mode the prior is injected only when
    ``use_prior_at_inference`` (METHODS.md §7: "whether priors are used at inference" is a
    choice; the released CPS checkpoints are evaluated as plain VNets). With no injection in eval
    mode the wrapper is exactly ``backbone(x)``. Note that in eval mode the SCDL block uses
    ``eval_proxy_samples`` and no token noise, so inference is deterministic by default.

    Args:
        backbone: network with ``encode``, ``decode(features, injection=None)``,
            ``feature_channels`` and ``decoder_channels`` (e.g. :class:`~scdl_monai.networks.vnet.VNet`);
            ``injection="head"`` also needs its 1×1 output layer as ``backbone.head``.
        num_classes: ``C`` (background included); required unless ``scdl`` is given.
        scdl: a ready :class:`SCDL` block whose ``injection_channels`` match the target (see
            :meth:`required_injection_channels`); ``None`` (default) builds one from ``num_classes``,
            ``x_dim`` and ``scdl_kwargs``.
        token_source: ``"encoder"`` (default) or ``"decoder_final"``.
        injection: one of :data:`INJECTION_TARGETS`; ``"all_stages"`` (default, paper).
        use_prior_at_inference: inject the prior in eval mode too (default ``True``).
        x_dim: token channels (released ``x_dim=16``); ignored when ``scdl`` is given.
        token_stage: index into ``backbone.encode(x)`` of the encoder feature turned into tokens
            (default 3: VNet ``x4``, 8n channels at patch/8, METHODS.md §7).
        token_pool: down-sampling of the token source per axis; ``None`` = 1 for ``"encoder"`` (x4 is
            already at patch/8) and 8 for ``"decoder_final"`` (96³ → 12³, released inference).
        scdl_kwargs: extra keyword arguments of :class:`SCDL` (``z_dim``, ``num_proxy_samples``,
            temperatures, ``dropout``, ``eval_proxy_samples``...); not with ``scdl``.

    Raises:
        TypeError: ``backbone`` lacks a hook, ``scdl`` is not an :class:`SCDL`.
        ValueError: unknown ``token_source``/``injection`` (with a suggestion), a token source that
            cannot feed the injection target, a bad ``token_stage``, a given ``scdl`` whose
            ``injection_channels``/``num_classes`` do not fit.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> net = SCDLNetwork(VNet(out_channels=3, n_filters=4), num_classes=3, scdl_kwargs={"z_dim": 16})
        >>> net(torch.zeros(2, 1, 32, 32, 32)).shape
        torch.Size([2, 3, 32, 32, 32])
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        scdl: SCDL | None = None,
        token_source: str = "encoder",
        injection: str = "all_stages",
        use_prior_at_inference: bool = True,
        x_dim: int = 16,
        token_stage: int = 3,
        token_pool: int | None = None,
        scdl_kwargs: Mapping | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"SCDLNetwork: `backbone` must be an nn.Module, got {type(backbone).__name__}.")
        missing = [a for a in ("encode", "decode", "feature_channels", "decoder_channels") if not hasattr(backbone, a)]
        if missing:
            raise TypeError(
                f"SCDLNetwork: `backbone` ({type(backbone).__name__}) must expose encode(x), "
                f"decode(features, injection=None), feature_channels and decoder_channels (like "
                f"scdl_monai.networks.vnet.VNet); missing {missing}."
            )
        self.token_source = _choice("token_source", token_source, TOKEN_SOURCES)
        self.injection = _choice("injection", injection, INJECTION_TARGETS)
        if not isinstance(use_prior_at_inference, bool):
            raise ValueError(f"SCDLNetwork: `use_prior_at_inference` must be a bool, got {use_prior_at_inference!r}.")
        self.use_prior_at_inference = use_prior_at_inference
        if self.token_source == "decoder_final" and self.injection in ("all_stages", "bottleneck"):
            raise ValueError(
                f"SCDLNetwork: token_source='decoder_final' builds the prior after decoding, so it can only be "
                f"injected at 'head' (or 'none'), got injection={injection!r}; use token_source='encoder'."
            )
        if self.injection == "head" and not isinstance(getattr(backbone, "head", None), nn.Module):
            raise TypeError(
                f"SCDLNetwork: injection='head' needs the backbone's 1x1 output layer as `backbone.head`; "
                f"{type(backbone).__name__} has none."
            )
        feature_channels = tuple(backbone.feature_channels)
        decoder_channels = tuple(backbone.decoder_channels)
        if isinstance(token_stage, bool) or not isinstance(token_stage, int) or not (
            -len(feature_channels) <= token_stage < len(feature_channels)
        ):
            raise ValueError(
                f"SCDLNetwork: `token_stage` must index the {len(feature_channels)} encoder features, got {token_stage!r}."
            )
        self.token_stage = token_stage % len(feature_channels)
        self.backbone = backbone

        required = self._required_channels(self.injection, feature_channels, decoder_channels)
        if scdl is None:
            if num_classes is None:
                raise ValueError("SCDLNetwork: give `num_classes` (or a ready `scdl` block).")
            kwargs = dict(scdl_kwargs or {})
            bad = sorted(set(kwargs) & {"num_classes", "x_dim", "injection_channels"})
            if bad:
                raise ValueError(f"SCDLNetwork: `scdl_kwargs` must not set {bad}; they are arguments of SCDLNetwork.")
            spatial_dims = kwargs.pop("spatial_dims", getattr(backbone, "spatial_dims", 3))
            scdl = SCDL(
                num_classes=num_classes,
                x_dim=x_dim,
                injection_channels=required or None,
                spatial_dims=spatial_dims,
                **kwargs,
            )
        else:
            if not isinstance(scdl, SCDL):
                raise TypeError(f"SCDLNetwork: `scdl` must be an SCDL block or None, got {type(scdl).__name__}.")
            if scdl_kwargs:
                raise ValueError("SCDLNetwork: give either `scdl` or `scdl_kwargs`, not both.")
            if num_classes is not None and num_classes != scdl.num_classes:
                raise ValueError(
                    f"SCDLNetwork: `num_classes`={num_classes!r} differs from the given scdl.num_classes={scdl.num_classes}."
                )
            if required and tuple(scdl.injection_channels) != required:
                raise ValueError(
                    f"SCDLNetwork: injection={self.injection!r} needs scdl.injection_channels={required}, "
                    f"got {tuple(scdl.injection_channels)}."
                )
        self.scdl = scdl
        self.num_classes = scdl.num_classes
        if self.token_source == "encoder":
            in_channels = feature_channels[self.token_stage]
        else:
            in_channels = decoder_channels[-1]
        self.token_extractor = TokenExtractor(
            self.token_source, in_channels=in_channels, x_dim=scdl.x_dim, spatial_dims=scdl.spatial_dims, pool_factor=token_pool
        )
        #: open record list while recording (see :meth:`recording`); never part of the state_dict.
        self._records: list[SCDLRecord] | None = None

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _required_channels(injection: str, feature_channels, decoder_channels) -> tuple[int, ...]:
        if injection == "all_stages":
            return tuple(decoder_channels)
        if injection == "bottleneck":
            return (feature_channels[-1],)
        if injection == "head":
            return (decoder_channels[-1],)
        return ()

    @classmethod
    def required_injection_channels(cls, backbone: nn.Module, injection: str) -> tuple[int, ...]:
        """``SCDL.injection_channels`` for ``injection`` on ``backbone`` (``()`` for ``"none"``)."""
        target = _choice("injection", injection, INJECTION_TARGETS)
        return cls._required_channels(target, tuple(backbone.feature_channels), tuple(backbone.decoder_channels))

    def injects(self) -> bool:
        """Whether a call in the current mode adds the prior (training, or eval with priors on)."""
        return self.injection != "none" and (self.training or self.use_prior_at_inference)

    # ------------------------------------------------------------------ recording
    @contextmanager
    def recording(self) -> Iterator[list[SCDLRecord]]:
        """Record every training call with gradients made inside the block; yields the list.

        Calls in eval mode or under ``torch.no_grad`` (e.g. a teacher or pseudo-label pass) are not
        recorded: their outputs carry no graph for the SCDL losses. The list is dropped at exit.

        Raises:
            RuntimeError: recording is already open on this network.
        """
        if self._records is not None:
            raise RuntimeError("SCDLNetwork.recording: this network is already recording (nested scdl_record?).")
        self._records = []
        try:
            yield self._records
        finally:
            self._records = None

    # ------------------------------------------------------------------ forward
    def forward_scdl(self, x: torch.Tensor, inject: bool | None = None) -> tuple[torch.Tensor, SCDLOutput]:
        """Logits and SCDL outputs of one pass (never recorded).

        Args:
            x: ``(B, C_in, *spatial)``.
            inject: add the prior; ``None`` = :meth:`injects` (the mode's default).

        Returns:
            ``(logits (B, C, *spatial), SCDLOutput)``.
        """
        inject = self.injects() if inject is None else bool(inject) and self.injection != "none"
        features = list(self.backbone.encode(x))
        if self.token_source == "encoder":
            out = self.scdl(self.token_extractor(features[self.token_stage]))
            injection = None
            if inject and self.injection == "bottleneck":
                features[-1] = features[-1] + self.scdl.project_prior(out.prior, [features[-1]])[0]
            elif inject and self.injection == "all_stages":
                # decoder stage k follows the skip-sum with encoder feature x_{4-k}: x4, x3, x2, x1
                injection = self.scdl.project_prior(out.prior, features[-2::-1])
            logits, last = self.backbone.decode(features, injection)
        else:
            logits, last = self.backbone.decode(features)
            out = self.scdl(self.token_extractor(last))
        if inject and self.injection == "head":
            logits = self.backbone.head(last + self.scdl.project_prior(out.prior, [last])[0])
        return logits, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, *spatial)``; records the SCDL outputs while recording (see class doc)."""
        record = self._records is not None and self.training and torch.is_grad_enabled()
        inject = self.injects()
        if not (record or inject):
            return self.backbone(x)  # the baseline's own call: bit-for-bit identical
        logits, out = self.forward_scdl(x, inject)
        if record:
            self._records.append(SCDLRecord(x, logits, out))
        return logits

    def encoder_scdl(self, x: torch.Tensor) -> SCDLOutput:
        """SCDL outputs of the encoder tokens of ``x`` alone (no decoder, no prior, never recorded).

        For methods whose decoder path that carries the prior never sees the labeled images
        (GenericSSL: D_θ runs on unlabeled images only), the labeled tokens come from this extra
        encoder pass (``SCDLMethod(labeled_pass="encoder")``).

        Raises:
            ValueError: ``token_source`` is not ``"encoder"``.
        """
        if self.token_source != "encoder":
            raise ValueError(
                f"SCDLNetwork.encoder_scdl: needs token_source='encoder', this network uses {self.token_source!r}."
            )
        return self.scdl(self.token_extractor(self.backbone.encode(x)[self.token_stage]))

    def token_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``z = MLP(tokens)`` as a map ``(B, z_dim, *grid)``, no prior, no proxies.

        The encoder path needs only ``encode`` (the decoder is skipped), which is what the
        masked-image semantic anchors of SAC use (paper §2.2, "through the shared encoder").
        """
        if self.token_source == "encoder":
            tokens = self.token_extractor(self.backbone.encode(x)[self.token_stage])
        else:
            tokens = self.token_extractor(self.backbone.decode(self.backbone.encode(x))[1])
        z = self.scdl.projector(tokens.flatten(2).transpose(1, 2))  # (B, L, D)
        return z.transpose(1, 2).reshape(z.shape[0], z.shape[-1], *tokens.shape[2:])

    def scdl_parameters(self) -> list[nn.Parameter]:
        """Parameters added by the SCDL branch (SCDL block and token extractor), not the backbone's."""
        return list(self.scdl.parameters()) + list(self.token_extractor.parameters())

    def __getattr__(self, name: str):
        """Fall back to the backbone for anything the wrapper does not define.

        The hooks a method calls directly (``encode``, ``decode``, ``head``, ``out_channels``,
        ``shape_factor``, ``norm``...) therefore keep working on the wrapped network; such direct
        hook calls bypass the SCDL branch (no prior, nothing recorded), e.g. MagicNet's cube passes.
        """
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "backbone" in modules and name not in ("backbone", "_records"):
                return getattr(modules["backbone"], name)
            raise


@contextmanager
def scdl_record(networks: Mapping[str, SCDLNetwork]) -> Iterator[dict[str, list[SCDLRecord]]]:
    """Record the training calls of several :class:`SCDLNetwork` at once.

    Args:
        networks: ``{name: SCDLNetwork}`` (the plain modules, not DDP wrappers: DDP calls the
            wrapped module, which records).

    Yields:
        ``{name: [SCDLRecord, ...]}``, filled in call order while the block runs.

    Example:
        >>> with scdl_record({"network_a": net}) as records:  # doctest: +SKIP
        ...     logits = net(x)
        >>> # records["network_a"][0].scdl.assignment is the (B, L, C) assignment of that call
    """
    with ExitStack() as stack:
        records = {}
        for name, net in networks.items():
            if not isinstance(net, SCDLNetwork):
                raise TypeError(f"scdl_record: network {name!r} must be an SCDLNetwork, got {type(net).__name__}.")
            records[name] = stack.enter_context(net.recording())
        yield records


def scdl_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every parameter of the SCDL branches of the :class:`SCDLNetwork` s inside ``module``, once each.

    Args:
        module: an :class:`SCDLNetwork`, a method owning some, or any module tree.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"scdl_parameters: `module` must be an nn.Module, got {type(module).__name__}.")
    seen: set[int] = set()
    params = []
    for m in module.modules():
        if isinstance(m, SCDLNetwork):
            for p in m.scdl_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


def scdl_param_groups(
    module: nn.Module,
    scdl_weight_decay: float = 1e-4,
    scdl_options: Mapping | None = None,
    trainable_only: bool = True,
) -> list[dict]:
    """Optimizer parameter groups: the baseline's parameters, then the SCDL parameters.

    The SCDL group gets ``weight_decay=scdl_weight_decay`` (paper §3.1: 1e-4; METHODS.md §7) and
    every other option from the optimizer's defaults, so it shares the baseline's optimizer type,
    learning rate and schedule (an ``LRScheduler`` scales every group). SGD baselines here already
    use momentum 0.9, as the paper asks; pass ``scdl_options={"momentum": 0.9}`` to force it.

    Args:
        module: the method (or one network) whose parameters the optimizer should see.
        scdl_weight_decay: weight decay of the SCDL group.
        scdl_options: further per-group options of the SCDL group (e.g. ``{"momentum": 0.9}``).
        trainable_only: skip parameters with ``requires_grad=False`` (a frozen teacher).

    Returns:
        ``[{"params": baseline params}, {"params": SCDL params, "weight_decay": ..., **scdl_options}]``;
        empty groups are left out. Use as ``torch.optim.SGD(scdl_param_groups(method), lr=..., ...)``.

    Raises:
        ValueError: negative ``scdl_weight_decay`` or ``scdl_options`` that set ``params``.
    """
    if isinstance(scdl_weight_decay, bool) or not isinstance(scdl_weight_decay, (int, float)) or scdl_weight_decay < 0:
        raise ValueError(f"scdl_param_groups: `scdl_weight_decay` must be a non-negative number, got {scdl_weight_decay!r}.")
    options = dict(scdl_options or {})
    if "params" in options:
        raise ValueError("scdl_param_groups: `scdl_options` must not contain 'params'.")
    scdl = [p for p in scdl_parameters(module) if p.requires_grad or not trainable_only]
    scdl_ids = {id(p) for p in scdl}
    base = [p for p in module.parameters() if id(p) not in scdl_ids and (p.requires_grad or not trainable_only)]
    groups = []
    if base:
        groups.append({"params": base})
    if scdl:
        groups.append({"params": scdl, "weight_decay": float(scdl_weight_decay), **options})
    return groups
