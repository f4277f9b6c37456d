"""A segmentation backbone wrapped with an SCDL branch: tokens → class distributions → decoder priors.

:class:`SCDLNetwork` is built *around* a backbone that has the encoder/decoder hooks of
:class:`~scdl_monai.networks.vnet.VNet` (``encode(x) -> [x1..x5]``,
``decode(features, injection=None) -> (logits, last_feature)``, ``feature_channels``,
``decoder_channels``, ``head``) and implements that same interface itself, so every baseline
calls it exactly as it would call the bare backbone (SCDL as a plug-in): ``forward(x)`` for the
plain passes, ``encode``/``decode``/``head`` for MagicNet's cube passes. The prior is computed
and added inside :meth:`SCDLNetwork.decode`, so every decoding path — the plain forward, the
cross-image and within-image cube passes and an EMA teacher (a ``deepcopy`` of the wrapper) —
gets the prior of the features it decodes. :class:`SCDLDiffVNet` adds the explicit DiffVNet hooks
GenericSSL calls (D_ξ, D_ψ paths without prior; the prior goes into D_θ).

Data flow of one decoding (Su et al., arXiv 2603.05202, §2.1):

* ``token_source="encoder"`` (paper: tokens are encoder embeddings; required when the prior is
  injected before or inside the decoder): tokens = 1×1 conv of ``features[token_stage]`` (VNet
  ``x4`` at patch/8 by default, ``x3`` at patch/4 with ``token_stage=2``) to ``x_dim``;
  ``SCDL(tokens)``; the prior is projected and added at the injection target; ``decode``.
* ``token_source="decoder_final"`` (released inference code ``Zyh55555/SCDL:
  inference_Synapse_MagicNet.py``): decode first, pool the last decoder feature to patch/8, run
  ``SCDL``; only ``injection="head"`` or ``"none"`` are possible (the prior exists only after
  decoding).

Injection targets (each adds ``project_prior(prior)`` — bias-free 1×1 conv, zero-initialised by
default, linear resize):

==============  ==============================================================================
``all_stages``  every decoder stage, after its skip-sum (paper §2.1; default)
``bottleneck``  the bottleneck ``x5`` before decoding (released ``networks/magicnet_SCDL_prior5.py``)
``head``        the last decoder feature before the 1×1 head (released MagicNet inference)
``none``        no prior; SCDL only shapes the features through its losses (released CPS inference)
==============  ==============================================================================

Stochastic and deterministic passes: the SCDL block samples (proxy samples, token noise,
projector dropout) only in a training-mode call with gradients enabled. A call under
``torch.no_grad`` — an EMA teacher or a pseudo-label pass — and every eval-mode call use the
deterministic block (proxy means, no noise, no dropout), so pseudo-labels are not randomised by
the SCDL branch.

Whenever a call needs no SCDL output (no injection in this mode and nothing recording) the wrapper
calls the backbone itself, so the result is bit-for-bit the backbone's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

import torch
from torch import nn

from scdl_monai.data.utils import look_up
from scdl_monai.networks.class_distribution import SCDL, TOKEN_SOURCES, SCDLOutput, TokenExtractor
from scdl_monai.networks.diffvnet import DiffVNet

__all__ = [
    "SCDLNetwork",
    "SCDLDiffVNet",
    "SCDLRecord",
    "INJECTION_TARGETS",
    "wrap_backbone",
    "scdl_record",
    "scdl_parameters",
    "scdl_param_groups",
]

#: Where the prior is added; ``all_stages`` is the paper's.
INJECTION_TARGETS = ("all_stages", "bottleneck", "head", "none")

_HOOKS = ("encode", "decode", "feature_channels", "decoder_channels")


class SCDLRecord(NamedTuple):
    """One recorded training decoding of an :class:`SCDLNetwork`.

    Attributes:
        logits: the returned logits ``(B, C, *spatial)`` (batch size and pseudo-label targets).
        scdl: the :class:`~scdl_monai.networks.class_distribution.SCDLOutput` of the call (token grid
            = ``scdl.prior.shape[2:]``).
    """

    logits: torch.Tensor
    scdl: SCDLOutput


class SCDLNetwork(nn.Module):
    """Backbone + :class:`~scdl_monai.networks.class_distribution.SCDL` branch with prior injection.

    Interface (what the baselines call, implemented here, not forwarded implicitly):
    ``forward(x) -> logits``, ``encode(x, ...)``, ``decode(features) -> (logits, last_feature)``
    (prior added), ``head``, ``feature_channels``, ``decoder_channels``, ``spatial_dims``,
    ``in_channels``, ``out_channels``, ``norm``, ``shape_factor()``, ``is_valid_shape()``; the
    bare network is :attr:`backbone`.

    In training mode with gradients enabled and recording switched on (:meth:`recording` /
    :func:`scdl_record`), every decoding appends an :class:`SCDLRecord` (in call order) to the
    open record list; the method that owns the network computes the SCDL losses from it
    (:class:`scdl_monai.methods.scdl.SCDLMethod`).

    Priors at inference: in eval mode the prior is injected only when ``use_prior_at_inference``
    (the released CPS checkpoints are evaluated as plain VNets). With no injection in eval mode the
    wrapper is exactly the backbone.

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
            (default 3: VNet ``x4``, 8n channels at patch/8; 2: ``x3`` at patch/4).
        token_pool: down-sampling of the token source per axis; ``None`` = 1 for ``"encoder"`` and
            8 for ``"decoder_final"`` (96³ → 12³, released inference).
        detach_prior: feed the decoder a detached prior, so the segmentation loss trains only the
            injection projections and not the proxies, the projector nor the token extractor
            (default ``False``: the gradient flows through the prior, as in the paper's end-to-end
            training).
        scdl_kwargs: extra keyword arguments of :class:`SCDL` (``z_dim``, ``num_proxy_samples``,
            temperatures, ``dropout``, ``eval_proxy_samples``, ``zero_init_injection``...); not
            with ``scdl``.
        init_seed: seed of the SCDL branch's initialisation, built inside
            ``torch.random.fork_rng`` so the global random stream (and hence the baseline's
            initialisation, data order and dropout) is untouched; ``None`` = ``torch.initial_seed()``.
            Give distinct seeds to the networks of one method.

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
        detach_prior: bool = False,
        scdl_kwargs: Mapping | None = None,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"SCDLNetwork: `backbone` must be an nn.Module, got {type(backbone).__name__}.")
        if isinstance(backbone, SCDLNetwork):
            raise TypeError("SCDLNetwork: `backbone` is already an SCDLNetwork.")
        missing = [a for a in _HOOKS if not hasattr(backbone, a)]
        if missing:
            raise TypeError(
                f"SCDLNetwork: `backbone` ({type(backbone).__name__}) must expose encode(x), "
                f"decode(features, injection=None), feature_channels and decoder_channels (like "
                f"scdl_monai.networks.vnet.VNet); missing {missing}."
            )
        self.token_source = look_up(token_source, TOKEN_SOURCES, "token_source", "SCDLNetwork")
        self.injection = look_up(injection, INJECTION_TARGETS, "injection", "SCDLNetwork")
        for key, flag in (("use_prior_at_inference", use_prior_at_inference), ("detach_prior", detach_prior)):
            if not isinstance(flag, bool):
                raise ValueError(f"SCDLNetwork: `{key}` must be a bool, got {flag!r}.")
        self.use_prior_at_inference = use_prior_at_inference
        self.detach_prior = detach_prior
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
        if init_seed is not None and (isinstance(init_seed, bool) or not isinstance(init_seed, int)):
            raise ValueError(f"SCDLNetwork: `init_seed` must be an int or None, got {init_seed!r}.")
        #: encoder feature widths and decoder stage widths of the backbone (its interface)
        self.feature_channels: tuple[int, ...] = tuple(backbone.feature_channels)
        self.decoder_channels: tuple[int, ...] = tuple(backbone.decoder_channels)
        n_features = len(self.feature_channels)
        if isinstance(token_stage, bool) or not isinstance(token_stage, int) or not -n_features <= token_stage < n_features:
            raise ValueError(f"SCDLNetwork: `token_stage` must index the {n_features} encoder features, got {token_stage!r}.")
        self.token_stage = token_stage % n_features
        self.backbone = backbone  # registered first: the backbone's parameters lead state_dict/parameters()
        self.spatial_dims: int = int(getattr(backbone, "spatial_dims", 3))
        self.in_channels: int | None = getattr(backbone, "in_channels", None)
        self.out_channels: int | None = getattr(backbone, "out_channels", None)
        self.norm: str | None = getattr(backbone, "norm", None)

        required = self._required_channels(self.injection, self.feature_channels, self.decoder_channels)
        seed = torch.initial_seed() if init_seed is None else init_seed
        # own seed, global stream untouched: the baseline's initialisation, data order and dropout stay identical
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed % 2**64)
            scdl = self._build_block(scdl, num_classes, x_dim, required, scdl_kwargs)
            in_channels = (
                self.feature_channels[self.token_stage] if self.token_source == "encoder" else self.decoder_channels[-1]
            )
            token_extractor = TokenExtractor(
                self.token_source, in_channels=in_channels, x_dim=scdl.x_dim, spatial_dims=scdl.spatial_dims,
                pool_factor=token_pool,
            )  # fmt: skip
        self.scdl = scdl
        self.token_extractor = token_extractor
        self.num_classes = scdl.num_classes
        #: open record list while recording (see :meth:`recording`); never part of the state_dict.
        self._records: list[SCDLRecord] | None = None

    # ------------------------------------------------------------------ configuration
    def _build_block(self, scdl, num_classes, x_dim, required, scdl_kwargs) -> SCDL:
        if scdl is None:
            if num_classes is None:
                raise ValueError("SCDLNetwork: give `num_classes` (or a ready `scdl` block).")
            kwargs = dict(scdl_kwargs or {})
            bad = sorted(set(kwargs) & {"num_classes", "x_dim", "injection_channels"})
            if bad:
                raise ValueError(f"SCDLNetwork: `scdl_kwargs` must not set {bad}; they are arguments of SCDLNetwork.")
            spatial_dims = kwargs.pop("spatial_dims", self.spatial_dims)
            return SCDL(
                num_classes=num_classes, x_dim=x_dim, injection_channels=required or None, spatial_dims=spatial_dims,
                **kwargs,
            )  # fmt: skip
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
        return scdl

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
        target = look_up(injection, INJECTION_TARGETS, "injection", "SCDLNetwork")
        return cls._required_channels(target, tuple(backbone.feature_channels), tuple(backbone.decoder_channels))

    def injects(self) -> bool:
        """Whether a call in the current mode adds the prior (training, or eval with priors on)."""
        return self.injection != "none" and (self.training or self.use_prior_at_inference)

    # ------------------------------------------------------------------ backbone interface
    def shape_factor(self) -> tuple[int, ...]:
        """The backbone's required divisor of every spatial size."""
        return self.backbone.shape_factor()

    def is_valid_shape(self, x_or_shape) -> bool:
        """Whether the backbone accepts this input shape."""
        return self.backbone.is_valid_shape(x_or_shape)

    @property
    def head(self) -> nn.Module:
        """The backbone's 1×1 output layer (applied to :meth:`decode`'s last feature)."""
        return self.backbone.head

    def encode(self, x: torch.Tensor, *args, **kwargs) -> list[torch.Tensor]:
        """The backbone's encoder features ``[x1, ..., x5]`` (no SCDL work here)."""
        return self.backbone.encode(x, *args, **kwargs)

    def decode(self, features: Sequence[torch.Tensor], injection=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder with the SCDL prior of these features: ``(logits, last_feature)``.

        The last feature is the one fed to the head (with ``injection="head"`` the prior is
        already added), so ``head(last_feature)`` reproduces the logits, as the backbone's
        contract says; MagicNet's recovered cube features therefore carry the prior too.

        Raises:
            ValueError: an ``injection`` is given (the wrapper injects its own prior).
        """
        if injection is not None:
            raise ValueError("SCDLNetwork.decode: the wrapper injects its own prior; `injection` must be None.")
        record = self._recording()
        inject = self.injects()
        if not (record or inject):
            return self.backbone.decode(features)  # the baseline's own call: bit-for-bit identical
        logits, last, out = self._decode_with_prior(list(features), inject)
        if record:
            self._records.append(SCDLRecord(logits, out))
        return logits, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, *spatial)``; records the SCDL outputs while recording (see class doc)."""
        if not (self._recording() or self.injects()):
            return self.backbone(x)  # the baseline's own call: bit-for-bit identical
        return self.decode(self.encode(x))[0]

    # ------------------------------------------------------------------ SCDL branch
    def _stochastic(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def _decode_with_prior(self, features: list[torch.Tensor], inject: bool):
        stochastic = self._stochastic()
        if self.token_source == "encoder":
            out = self.scdl(self.token_extractor(features[self.token_stage]), stochastic=stochastic)
            prior = out.prior.detach() if self.detach_prior else out.prior
            stages = None
            if inject and self.injection == "bottleneck":
                features[-1] = features[-1] + self.scdl.project_prior(prior, [features[-1]])[0]
            elif inject and self.injection == "all_stages":
                # decoder stage k follows the skip-sum with encoder feature x_{4-k}: x4, x3, x2, x1
                stages = self.scdl.project_prior(prior, features[-2::-1])
            logits, last = self.backbone.decode(features, stages)
        else:
            logits, last = self.backbone.decode(features)
            out = self.scdl(self.token_extractor(last), stochastic=stochastic)
            prior = out.prior.detach() if self.detach_prior else out.prior
        if inject and self.injection == "head":
            last = last + self.scdl.project_prior(prior, [last])[0]
            logits = self.backbone.head(last)
        return logits, last, out

    def encoder_scdl(self, x: torch.Tensor) -> SCDLOutput:
        """SCDL outputs of the encoder tokens of ``x`` alone (no decoder, no prior, never recorded).

        For methods whose prior-carrying decoder never sees the labeled images (GenericSSL: D_θ
        runs on unlabeled images only), the labeled tokens come from this extra encoder pass
        (``SCDLMethod(labeled_pass="encoder")``).

        Raises:
            ValueError: ``token_source`` is not ``"encoder"``.
        """
        if self.token_source != "encoder":
            raise ValueError(
                f"SCDLNetwork.encoder_scdl: needs token_source='encoder', this network uses {self.token_source!r}."
            )
        tokens = self.token_extractor(self.backbone.encode(x)[self.token_stage])
        return self.scdl(tokens, stochastic=self._stochastic())

    def token_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``z = MLP(tokens)`` as a map ``(B, z_dim, *grid)``, no prior, no proxies.

        The encoder path needs only ``encode`` (the decoder is skipped), which is what the
        masked-image semantic anchors of SAC use (paper §2.2, "through the shared encoder").
        The projector's dropout follows its module mode.
        """
        if self.token_source == "encoder":
            tokens = self.token_extractor(self.backbone.encode(x)[self.token_stage])
        else:
            tokens = self.token_extractor(self.backbone.decode(self.backbone.encode(x))[1])
        z = self.scdl.project(tokens.flatten(2).transpose(1, 2))  # (B, L, D)
        return z.transpose(1, 2).reshape(z.shape[0], z.shape[-1], *tokens.shape[2:])

    def scdl_parameters(self) -> list[nn.Parameter]:
        """Parameters added by the SCDL branch (SCDL block and token extractor), not the backbone's."""
        return list(self.scdl.parameters()) + list(self.token_extractor.parameters())

    # ------------------------------------------------------------------ recording
    def _recording(self) -> bool:
        return self._records is not None and self.training and torch.is_grad_enabled()

    @contextmanager
    def recording(self) -> Iterator[list[SCDLRecord]]:
        """Record every training decoding with gradients made inside the block; yields the list.

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

    def extra_repr(self) -> str:
        return (
            f"token_source={self.token_source!r}, token_stage={self.token_stage}, injection={self.injection!r}, "
            f"use_prior_at_inference={self.use_prior_at_inference}, detach_prior={self.detach_prior}"
        )


class SCDLDiffVNet(SCDLNetwork):
    """:class:`SCDLNetwork` around a :class:`~scdl_monai.networks.diffvnet.DiffVNet` (GenericSSL).

    Tokens come from the shared encoder and the prior is injected into D_θ, the decoder of
    :meth:`forward` / :meth:`theta_logits` and of inference; D_ξ (:meth:`denoise`) and D_ψ
    (:meth:`difficulty_logits`) are the backbone's own paths, without prior. The decoders are
    exposed as properties for the decoder EMA of A&D.
    """

    def __init__(self, backbone: DiffVNet, *args, **kwargs) -> None:
        if not isinstance(backbone, DiffVNet):
            raise TypeError(f"SCDLDiffVNet: `backbone` must be a DiffVNet, got {type(backbone).__name__}.")
        super().__init__(backbone, *args, **kwargs)

    @property
    def decoder_xi(self) -> nn.Module:
        return self.backbone.decoder_xi

    @property
    def decoder_psi(self) -> nn.Module:
        return self.backbone.decoder_psi

    @property
    def decoder_theta(self) -> nn.Module:
        return self.backbone.decoder_theta

    def denoise(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D_ξ logits (no prior)."""
        return self.backbone.denoise(x, x_t, t)

    def difficulty_logits(self, x: torch.Tensor) -> torch.Tensor:
        """D_ψ logits (no prior)."""
        return self.backbone.difficulty_logits(x)

    def theta_logits(self, x: torch.Tensor) -> torch.Tensor:
        """D_θ logits with the prior (same as :meth:`forward`)."""
        return self(x)


def wrap_backbone(backbone: nn.Module, enabled: bool = True, settings: Mapping | None = None, **kwargs) -> nn.Module:
    """The backbone wrapped with an SCDL branch — or the backbone itself when ``enabled`` is False.

    Picks :class:`SCDLDiffVNet` for a DiffVNet, :class:`SCDLNetwork` otherwise. Bundle configs use
    it to build each network around its backbone, sharing one ``settings`` dict (``enabled``
    carries the ``A_only`` switch for the second network of a method).

    Args:
        backbone: the baseline's network.
        enabled: wrap it (default) or return it unchanged.
        settings: :class:`SCDLNetwork` arguments shared by several networks.
        kwargs: further :class:`SCDLNetwork` arguments (override ``settings``), e.g. ``init_seed``.
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"wrap_backbone: `enabled` must be a bool, got {enabled!r}.")
    if settings is not None and not isinstance(settings, Mapping):
        raise ValueError(f"wrap_backbone: `settings` must be a mapping of SCDLNetwork arguments, got {settings!r}.")
    if not enabled:
        return backbone
    cls = SCDLDiffVNet if isinstance(backbone, DiffVNet) else SCDLNetwork
    return cls(backbone, **{**dict(settings or {}), **kwargs})


@contextmanager
def scdl_record(networks: Mapping[str, SCDLNetwork]) -> Iterator[dict[str, list[SCDLRecord]]]:
    """Record the training decodings of several :class:`SCDLNetwork` at once.

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

    The SCDL group gets ``weight_decay=scdl_weight_decay`` (paper §3.1: 1e-4) and every other
    option from the optimizer's defaults, so it shares the baseline's optimizer type, learning rate
    and schedule (an ``LRScheduler`` scales every group). Pass e.g. ``scdl_options={"lr": ...}``
    for a different learning rate.

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
