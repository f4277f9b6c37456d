"""SKCDF: semantic-knowledge-complementarity decoupling framework (Zhang, Yin et al., CVPR 2025).

One :class:`~scdl_monai.networks.skcdf.SKCDFNetwork`: a shared encoder, the SKC module on the
bottleneck, a decoder D_l that learns from the labels and a decoder D_u that learns from
pseudo-labels and is also pulled toward D_l by a parameter EMA (GenericSSL-style decoupling);
each decoder has a main head and an ABC-style balanced head. Inference: D_u's main head.
Per iteration (docs/methods.md#skcdf; ``yinguanchun/SKCDF@12f807d:SKCDF/code/train_skcdf.py``,
below ``:N``):

0. EMA of **parameters** (buffers untouched), before the forward, in this order (``:221-238``):
   (i) D_l.head ← m·D_l.head + (1−m)·D_l.head_balanced; (ii) D_u ← m·D_u + (1−m)·D_l (every
   parameter, both heads included); (iii) D_u.head ← m·D_u.head + (1−m)·D_u.head_balanced; m = 0.99.
1. Pass 1: ``cat[x_L, x_U]`` → E → SKC (cross) → D_l → ``(z, z_b)`` (``:243-252``).
2. ``L_sup = DCE(z_L, y) + DCE(z_b,L ⊙ M_L, y ⊙ M_L)``, ``M_L ~ Bernoulli(r[y])`` per voxel (``:254-259``).
3. Pseudo-labels ``ŷ = argmax z_U``, ``ŷ_b = argmax z_b,U`` from that train-mode forward (no
   gradient); ``M_U ~ Bernoulli(ρ_e[ŷ_b])``, ``ρ_e = 1 − (e/E)(1 − r)`` (``:261-272``).
4. Pass 2: ``x_U`` → E → SKC (self) → D_u → ``(u, u_b)`` (``:274``).
5. ``L_u = DCE(u, ŷ) + DCE(u_b ⊙ M_U, ŷ_b ⊙ M_U)``; ``loss = L_sup + λ(e)·L_u`` (``:276-282``).

DCE is unweighted mean CE + (1 − batch soft Dice over the foreground classes, smooth 1) —
``utils/loss.py:80-206``; the trainer passes no class weights (``:76-90,187-188``). Computed with
:class:`~scdl_monai.losses.segmentation.DiceCELoss` in its reference form (−Dice) plus 1, in
float32 (the reference's float64 mask makes its balanced terms float64; the difference is
rounding). λ(e) = 10·exp(−5(1 − e′/E)²) with the previous epoch e′ is set into ``unsup_weight``
by :class:`~scdl_monai.handlers.schedules.UnsupWeightSchedule` (``w_max`` 10, ``ramp_epochs`` E,
lag 1), as for GenericSSL.

Keep rates ``r_c = min_k n_k / n_c`` from voxel counts ``n_c`` (background included) of the first
four sorted labeled volumes, whole preprocessed volumes (``:190-206``); see
:func:`keep_rates_from_datalist`. They are a float64 buffer (``keep_rates``), so checkpoints hold them.

Quirks kept as switches (default = reference): Q2 ``balanced_mask_mode`` (``"reference"``: the
mask multiplies the balanced logits of every class and the target, so a dropped voxel stays in the
loss as a uniform-softmax background voxel; ``"exclude"``: dropped voxels are left out of CE and
Dice); Q6 ``decoder_u_trainable`` (D_u gets SGD updates besides the EMA; False: EMA only);
Q7 ``head_ema``; Q9 ``pseudo_label_source`` (``"train_pass"``; ``"eval_pass"``: a no-grad
eval-mode pass-1 forward). Network quirks (Q1, Q5, Q8, Q10) are
:class:`~scdl_monai.networks.skcdf.SKCDFNetwork` / :class:`~scdl_monai.networks.skc.SKCModule`
options. The Bernoulli masks use torch's global generator (checkpointed by
:class:`~scdl_monai.engines.random_state.RandomStates`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scdl_monai.data.utils import check_number, look_up
from scdl_monai.networks.weight_ema import ema_update
from scdl_monai.losses.segmentation import DiceCELoss
from scdl_monai.methods.base import MethodOutput, SemiSupervisedMethod, class_labels, plain_tensor
from scdl_monai.networks.skcdf import SKCDFOutput

__all__ = [
    "SKCDF",
    "SKCDFPasses",
    "SKCDFTerms",
    "class_keep_rates",
    "label_class_counts",
    "keep_rates_from_datalist",
    "BALANCED_MASK_MODES",
    "PSEUDO_LABEL_SOURCES",
]

#: Q2: how the Bernoulli mask enters the balanced-head losses.
BALANCED_MASK_MODES = ("reference", "exclude")
#: Q9: where the pseudo-labels come from.
PSEUDO_LABEL_SOURCES = ("train_pass", "eval_pass")
_NETWORK_API = ("labeled_pass", "unlabeled_pass", "decoder_l", "decoder_u", "balanced_head", "attention")


# ---------------------------------------------------------------------------------------- keep rates
def class_keep_rates(counts: Sequence[float] | torch.Tensor, floor: float = 1.0) -> torch.Tensor:
    """``r_c = min_k n_k / n_c`` (``train_skcdf.py:190-206``), float64.

    The rarest class keeps every voxel (r = 1), frequent classes (background) almost none. Counts
    are floored at ``floor`` first: a class with no voxel would make every rate 0 and its own NaN
    in the reference; with the floor it counts as a one-voxel class (r = 1 for it, finite elsewhere).

    Args:
        counts: ``(C,)`` voxel counts per class (background included).
        floor: lower bound applied to the counts (> 0).

    Raises:
        ValueError: not a non-empty 1-D sequence, negative counts, or ``floor <= 0``.

    Example:
        >>> class_keep_rates([1000, 10, 50]).tolist()
        [0.01, 1.0, 0.2]
    """
    check_number(floor, "floor", "class_keep_rates", minimum=0.0, strict=True)
    n = torch.as_tensor(counts, dtype=torch.float64).detach().cpu()
    if n.ndim != 1 or n.numel() == 0 or bool((n < 0).any()):
        raise ValueError(f"class_keep_rates: `counts` must be a non-empty 1-D list of counts >= 0, got {counts!r}.")
    n = n.clamp(min=float(floor))
    return n.min() / n


def label_class_counts(labels: Iterable[Any], num_classes: int) -> torch.Tensor:
    """Voxel count of every class ``0..C−1`` summed over label volumes (float64 ``(C,)``).

    Raises:
        ValueError: a label value outside ``[0, num_classes)``.
    """
    check_number(num_classes, "num_classes", "label_class_counts", integer=True, minimum=2)
    total = torch.zeros(num_classes, dtype=torch.float64)
    for label in labels:
        values = torch.as_tensor(np.asarray(label)).reshape(-1).round().long()
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(
                f"label_class_counts: label values must lie in [0, {num_classes}), got "
                f"[{int(values.min())}, {int(values.max())}]."
            )
        total += torch.bincount(values, minlength=num_classes).to(torch.float64)
    return total


def keep_rates_from_datalist(
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    num_classes: int,
    num_volumes: int | None = 4,
    floor: float = 1.0,
) -> torch.Tensor:
    """Keep rates from whole preprocessed labeled volumes (``train_skcdf.py:190-206``; quirk Q3).

    The items are sorted by their ``image`` path (the reference reads its sorted split file); with
    ``num_volumes=4`` (reference) the first four are used, **wrapping around** when there are fewer
    (the reference dataset indexes modulo its length, so a volume can count twice); ``None`` uses
    every labeled volume once.

    Args:
        items: datalist entries with ``image`` and ``label`` (e.g. ``@train#dataset#data``).
        transform: deterministic preprocessing (load + resize) giving ``{"label": array}``.
        num_classes: C.
        num_volumes: volumes to count (reference 4) or None for all.
        floor: count floor of :func:`class_keep_rates`.

    Raises:
        ValueError: no items, or items without ``label``.
    """
    items = list(items)
    if not items or any("label" not in item for item in items):
        raise ValueError("keep_rates_from_datalist: `items` must be a non-empty list of entries with a 'label'.")
    ordered = sorted(items, key=lambda item: str(item.get("image", "")))
    if num_volumes is None:
        chosen = ordered
    else:
        check_number(num_volumes, "num_volumes", "keep_rates_from_datalist", integer=True, minimum=1)
        chosen = [ordered[i % len(ordered)] for i in range(num_volumes)]
    labels = (plain_tensor(transform(dict(item))["label"]) for item in chosen)
    return class_keep_rates(label_class_counts(labels, num_classes), floor)


# ---------------------------------------------------------------------------------------- passes
class SKCDFPasses(NamedTuple):
    """The network passes of one SKCDF step.

    Attributes:
        labeled: pass 1 (D_l) logits for all ``2P`` samples ``[L; U]``.
        unlabeled: pass 2 (D_u) logits for the ``P`` unlabeled samples.
        pseudo_label: ``(P, 1, *spatial)`` int64 argmax of the main head on the unlabeled half.
        pseudo_label_balanced: the same for the balanced head (None without balanced heads).
    """

    labeled: SKCDFOutput
    unlabeled: SKCDFOutput
    pseudo_label: torch.Tensor
    pseudo_label_balanced: torch.Tensor | None


class SKCDFTerms(NamedTuple):
    """Loss terms of one step, with their graphs (tests and analysis).

    Attributes:
        loss_sup: L_sup (main + balanced head on the labeled half).
        loss_u: L_u (main + balanced head on pass 2 vs the pseudo-labels).
        mask_l: ``(P, 1, *spatial)`` float Bernoulli mask of the labeled balanced term (None without).
        mask_u: the same for the unlabeled balanced term.
        passes: :class:`SKCDFPasses`.
    """

    loss_sup: torch.Tensor
    loss_u: torch.Tensor
    mask_l: torch.Tensor | None
    mask_u: torch.Tensor | None
    passes: SKCDFPasses


class _TrainingPasses(nn.Module):
    """Both gradient-carrying passes of one step in one ``forward`` (what DDP wraps), pseudo-labels between."""

    def __init__(self, network: nn.Module, pseudo_label_source: str) -> None:
        super().__init__()
        self.network = network
        self.pseudo_label_source = pseudo_label_source

    def forward(self, image_l: torch.Tensor, image_u: torch.Tensor) -> SKCDFPasses:
        net, p = self.network, image_l.shape[0]
        both = torch.cat([image_l, image_u], dim=0)
        labeled = net.labeled_pass(both)
        source = labeled
        if self.pseudo_label_source == "eval_pass":
            was_training = net.training
            net.eval()
            with torch.no_grad():
                source = net.labeled_pass(both)
            net.train(was_training)
        with torch.no_grad():
            pseudo = source.logits[p:].argmax(dim=1, keepdim=True)
            pseudo_b = source.balanced[p:].argmax(dim=1, keepdim=True) if source.balanced is not None else None
        unlabeled = net.unlabeled_pass(image_u)
        return SKCDFPasses(labeled, unlabeled, pseudo, pseudo_b)


# ---------------------------------------------------------------------------------------- method
class SKCDF(SemiSupervisedMethod):
    """SKCDF training step on the semi-supervised engine (module docstring).

    Args:
        network: a :class:`~scdl_monai.networks.skcdf.SKCDFNetwork`.
        num_classes: C (must equal the network's ``out_channels``).
        keep_rates: ``(C,)`` class keep rates ``r`` (:func:`keep_rates_from_datalist`); None: all 1
            (no masking; for tests — bundles compute them from the labeled volumes).
        max_epochs: E of ``ρ_e = 1 − (e/E)(1 − r)`` (reference 1500; the reference then runs
            epochs 0..E, i.e. E + 1 epochs, and the last one uses ρ = r).
        ema_momentum: m (reference ``--ema_w 0.99``).
        unsup_weight_max: λ's final value (reference ``--cps_w 10``); recorded only, the value in
            use is the ``unsup_weight`` buffer that the schedule handler sets.
        balanced_mask_mode: Q2, :data:`BALANCED_MASK_MODES`.
        decoder_u_trainable: Q6; False freezes D_u's parameters for SGD (EMA only).
        head_ema: Q7, the head EMAs (i) and (iii).
        pseudo_label_source: Q9, :data:`PSEUDO_LABEL_SOURCES`.

    Raises:
        TypeError: ``network`` lacks the SKCDFNetwork passes.
        ValueError: invalid arguments (named in the message).

    Example:
        >>> from scdl_monai.networks.skcdf import SKCDFNetwork
        >>> method = SKCDF(SKCDFNetwork(out_channels=3, n_filters=4, patch_size=(32, 32, 32)), num_classes=3)
        >>> x = torch.randn(1, 1, 32, 32, 32)
        >>> out = method.train_step(None, x, torch.randint(0, 3, (1, 1, 32, 32, 32)), x)
        >>> sorted(out.terms)
        ['loss_sup', 'loss_u', 'unsup_weight']
    """

    network_names = ("network",)

    def __init__(
        self,
        network: nn.Module,
        num_classes: int,
        keep_rates: Sequence[float] | torch.Tensor | None = None,
        max_epochs: int = 1500,
        ema_momentum: float = 0.99,
        unsup_weight_max: float = 10.0,
        balanced_mask_mode: str = "reference",
        decoder_u_trainable: bool = True,
        head_ema: bool = True,
        pseudo_label_source: str = "train_pass",
    ) -> None:
        super().__init__()
        owner = "SKCDF"
        if not isinstance(network, nn.Module) or any(not hasattr(network, a) for a in _NETWORK_API):
            raise TypeError(f"{owner}: network must be an SKCDFNetwork (with {_NETWORK_API}), got {type(network).__name__}.")
        check_number(num_classes, "num_classes", owner, integer=True, minimum=2)
        if getattr(network, "out_channels", num_classes) != num_classes:
            raise ValueError(f"{owner}: num_classes={num_classes} but the network has out_channels={network.out_channels}.")
        check_number(max_epochs, "max_epochs", owner, integer=True, minimum=1)
        if isinstance(ema_momentum, bool) or not isinstance(ema_momentum, (int, float)) or not 0 <= ema_momentum <= 1:
            raise ValueError(f"{owner}: `ema_momentum` must be a float in [0, 1], got {ema_momentum!r}.")
        check_number(unsup_weight_max, "unsup_weight_max", owner)
        self.balanced_mask_mode = look_up(balanced_mask_mode, BALANCED_MASK_MODES, "balanced_mask_mode", owner)
        self.pseudo_label_source = look_up(pseudo_label_source, PSEUDO_LABEL_SOURCES, "pseudo_label_source", owner)
        if keep_rates is None:
            rates = torch.ones(num_classes, dtype=torch.float64)
        else:
            rates = torch.as_tensor(keep_rates, dtype=torch.float64).detach().cpu().clone()
            if rates.shape != (num_classes,) or not bool(((rates >= 0) & (rates <= 1)).all()):
                raise ValueError(f"{owner}: `keep_rates` must be {num_classes} values in [0, 1], got {keep_rates!r}.")

        self.network = network
        self.num_classes = num_classes
        self.max_epochs = max_epochs
        self.ema_momentum = float(ema_momentum)
        self.unsup_weight_max = float(unsup_weight_max)
        self.decoder_u_trainable = bool(decoder_u_trainable)
        self.head_ema = bool(head_ema)
        self.register_buffer("keep_rates", rates)
        self.dce = DiceCELoss(mode="reference")
        if not self.decoder_u_trainable and network.decoder_u is not None:
            network.decoder_u.requires_grad_(False)
        # not registered (the network would appear twice in state_dict)
        object.__setattr__(self, "_passes", _TrainingPasses(network, self.pseudo_label_source))

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def update_ema(self) -> None:
        """Step 0: the parameter EMAs (i), (ii), (iii) in the reference order (``train_skcdf.py:221-238``)."""
        net, m = self.network, self.ema_momentum
        heads = self.head_ema and net.balanced_head
        if heads:
            ema_update(net.decoder_l.head, net.decoder_l.head_balanced, m)
        if net.decoder_u is not None:
            ema_update(net.decoder_u, net.decoder_l, m)
            if heads:
                ema_update(net.decoder_u.head, net.decoder_u.head_balanced, m)

    def keep_rates_at(self, epoch: float) -> torch.Tensor:
        """``ρ_e = 1 − (e/E)(1 − r)`` (float64 ``(C,)``): 1 at ``e = 0``, ``r`` at ``e = E`` (``train_skcdf.py:261-272``)."""
        return 1.0 - (float(epoch) / self.max_epochs) * (1.0 - self.keep_rates)

    @staticmethod
    def balance_mask(label: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
        """``M ~ Bernoulli(rates[label])`` per voxel (float64, like ``label``'s shape; global RNG)."""
        return torch.bernoulli(rates.to(label.device)[label])

    def dice_ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """SKCDF's DCE: mean CE + (1 − batch soft Dice over classes ≥ 1, smooth 1)."""
        return self.dce(logits, target) + 1.0  # DiceCELoss(reference) reports −Dice

    def balanced_dice_ce(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """DCE of a balanced head under the Bernoulli ``mask`` (``(B, 1, *spatial)``), Q2."""
        if self.balanced_mask_mode == "reference":
            # the mask multiplies the logits of every class and the target (train_skcdf.py:259,276)
            return self.dice_ce(logits * mask.to(logits.dtype), target * mask.to(target.dtype))
        keep = mask.to(torch.float32)
        logits = logits.float()
        nll = F.cross_entropy(logits, target[:, 0], reduction="none").unsqueeze(1)
        ce = (nll * keep).sum() / keep.sum().clamp(min=1.0)
        probs = torch.softmax(logits, dim=1) * keep
        onehot = torch.zeros_like(probs).scatter_(1, target, 1.0) * keep
        axes = [0, *range(2, logits.ndim)]
        tp = (probs * onehot).sum(axes)
        fp = (probs * (1 - onehot)).sum(axes)
        fn = ((1 - probs) * onehot).sum(axes)
        dice = (2 * tp + 1.0) / (2 * tp + fp + fn + 1.0 + 1e-8)
        return ce + 1.0 - dice[1:].mean()

    def _runner(self) -> nn.Module:
        if "passes" not in self._ddp_wrappers and self._passes.network is not self.network:
            object.__setattr__(self, "_passes", _TrainingPasses(self.network, self.pseudo_label_source))
        return self._ddp_wrappers.get("passes", self._passes)

    def _check_inputs(self, image_l, label_l, image_u):
        if image_u is None or image_u.shape[0] == 0:
            raise ValueError(
                "SKCDF: image_u must hold unlabeled images (pass 2 and L_u need them); give the trainer an "
                "unlabeled_data_loader."
            )
        image_l, label_l, image_u = plain_tensor(image_l), plain_tensor(label_l), plain_tensor(image_u)
        self.check_batches(image_l, label_l, image_u)
        if self.network.attention == "cross" and image_u.shape[0] != image_l.shape[0]:
            raise ValueError(
                f"SKCDF: cross-attention needs as many unlabeled as labeled images per step, got "
                f"{image_l.shape[0]} labeled and {image_u.shape[0]} unlabeled (set unlabeled_batch_size = batch_size)."
            )
        return image_l, class_labels(label_l, self.num_classes, "SKCDF"), image_u

    def compute_losses(self, image_l, label_l, image_u, epoch: float = 0) -> SKCDFTerms:
        """Steps 1–5 (no EMA): L_sup and L_u with their graphs.

        Args:
            image_l: ``(P, C_in, *spatial)``; label_l: ``(P, 1, *spatial)``; image_u: ``(P, C_in, *spatial)``.
            epoch: 0-based epoch ``e`` of ``ρ_e``.

        Raises:
            ValueError: missing unlabeled images, unequal batches in cross mode, bad shapes or labels.
        """
        image_l, label_l, image_u = self._check_inputs(image_l, label_l, image_u)
        passes: SKCDFPasses = self._runner()(image_l, image_u)
        p = image_l.shape[0]
        z = passes.labeled
        loss_sup = self.dice_ce(z.logits[:p], label_l)
        loss_u = self.dice_ce(passes.unlabeled.logits, passes.pseudo_label)
        mask_l = mask_u = None
        if z.balanced is not None:
            mask_l = self.balance_mask(label_l, self.keep_rates)
            loss_sup = loss_sup + self.balanced_dice_ce(z.balanced[:p], label_l, mask_l)
            pseudo_b = passes.pseudo_label_balanced
            mask_u = self.balance_mask(pseudo_b, self.keep_rates_at(epoch))
            loss_u = loss_u + self.balanced_dice_ce(passes.unlabeled.balanced, pseudo_b, mask_u)
        return SKCDFTerms(loss_sup, loss_u, mask_l, mask_u, passes)

    # ------------------------------------------------------------------ training
    def forward(self, image_l, label_l, image_u=None, epoch: float = 0) -> MethodOutput:
        """Steps 1–6: ``MethodOutput(L_sup + λ·L_u, pred = D_l logits on the labeled half, terms)``."""
        terms = self.compute_losses(image_l, label_l, image_u, epoch)
        loss = terms.loss_sup + self.unsup_weight * terms.loss_u
        logged = {
            "loss_sup": terms.loss_sup.detach(),
            "loss_u": terms.loss_u.detach(),
            "unsup_weight": self.unsup_weight.detach().clone(),
        }
        pred = terms.passes.labeled.logits[: plain_tensor(image_l).shape[0]].detach()
        return MethodOutput(loss=loss, pred=pred, terms=logged)

    def train_step(self, engine: Any, image_l, label_l, image_u) -> MethodOutput:
        """One iteration: :meth:`update_ema` (step 0), then :meth:`forward` at the engine's 0-based epoch."""
        self.update_ema()
        epoch = engine.state.epoch - 1 if engine is not None else 0
        return self(image_l, label_l, image_u, epoch=epoch)

    def wrap_ddp(self, **ddp_kwargs: Any) -> SKCDF:
        """Wrap both training passes in ``DistributedDataParallel`` (``find_unused_parameters=True``
        is needed while the unused reference ``map_in`` convolutions exist, or with D_u frozen)."""
        self._runner()
        return self._wrap_passes_ddp(self._passes, **ddp_kwargs)

    def inference_network(self) -> nn.Module:
        """The network itself: its ``forward`` is E → SKC (self) → D_u main head."""
        return self.network

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, max_epochs={self.max_epochs}, ema_momentum={self.ema_momentum}, "
            f"balanced_mask_mode={self.balanced_mask_mode!r}, pseudo_label_source={self.pseudo_label_source!r}"
        )
