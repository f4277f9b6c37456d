"""SCDL losses: bidirectional proxy alignment (CDBA) and semantic anchor constraints (SAC).

Su et al., arXiv 2603.05202 §2.1–2.2; forms and constants checked against
``Zyh55555/SCDL@6b2541c7:networks/SCDL.py``. Notation: ``t`` a token, ``c`` a class
(background included), ``ā_{t,c}`` the mean cosine of token ``t`` to ``S`` samples of proxy ``c``
(``SCDLOutput.assignment``), ``s_{t,c} = cos(ẑ_t, μ̂_c)`` (``SCDLOutput.similarity``),
``P(c|t)`` (``SCDLOutput.probs``) and ``w_{t,c}`` per-token class weights (ground-truth area
proportions for labeled tokens, sharpened detached assignments for unlabeled ones; see
:mod:`scdl_monai.networks.class_distribution`).

The losses take tensors only and never run a network. Where the paper and the released
code differ, the code form is the default and the paper form is an option:

* :class:`P2ELoss` (proxy → embedding): code ``mean_c mean_t exp(−(2w−1)·ā)``; paper Eq. 4
  ``mean_c exp(−mean_t (2w−1)·ā)``.
* :class:`E2PLoss` (embedding → proxy): code ``mean_t Σ_c w·(1−ā)``; paper Eq. 3
  ``mean_t Σ_c P(c|t)·(1−s)``.
* :class:`ProxyLoss` = P2E + 0.1·E2P (the reference's ``dist_loss_weight``). The reference also
  computes a symmetric KL between its two assignments; both are softmaxes over classes with equal
  temperatures, so it is identically zero and is dropped.
* :class:`SACLoss`: ``mean over present c of (1 − cos(μ_c, anchor_c))`` with detached anchors
  (paper Eq. 9), anchors from :func:`sac_anchors_feature_pool` (cheap default) or
  :func:`sac_anchors_masked_image` (paper §2.2).

All sums run in float32 (inputs are cast with ``.float()``), as in
:mod:`scdl_monai.losses.segmentation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scdl_monai.data.utils import check_number, look_up
from scdl_monai.networks.class_distribution import token_weights_from_labels

__all__ = [
    "P2ELoss",
    "E2PLoss",
    "ProxyLoss",
    "SACLoss",
    "sac_anchors_feature_pool",
    "sac_anchors_masked_image",
    "LOSS_FORMS",
    "REDUCTIONS",
]

#: ``"code"`` = released ``Zyh55555/SCDL`` module (default), ``"paper"`` = the paper's equation.
LOSS_FORMS = ("code", "paper")
REDUCTIONS = ("mean", "sum", "none")

_NORM_LAYERS = (nn.modules.batchnorm._NormBase,)  # BatchNorm*, InstanceNorm* (the layers with running stats)
_DROPOUT_LAYERS = (nn.modules.dropout._DropoutNd,)



def _check_pair(owner: str, names: tuple[str, str], a, b) -> None:
    for name, t in zip(names, (a, b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{owner}: `{name}` must be a tensor (..., C), got {type(t).__name__}.")
        if t.ndim < 1 or t.shape[-1] < 1:
            raise ValueError(f"{owner}: `{name}` must have shape (..., C), got {tuple(t.shape)}.")
    if a.shape != b.shape:
        raise ValueError(
            f"{owner}: `{names[0]}` {tuple(a.shape)} and `{names[1]}` {tuple(b.shape)} must have the same shape."
        )


def _token_mask(owner: str, mask, like: torch.Tensor) -> torch.Tensor:
    """``(...)`` float 0/1 token mask for a ``(..., C)`` tensor; all ones when ``mask`` is None."""
    if mask is None:
        return like.new_ones(like.shape[:-1], dtype=torch.float32)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(like.shape[:-1]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{owner}: `mask` must have the token shape {tuple(like.shape[:-1])}, got {shape}.")
    return mask.to(device=like.device, dtype=torch.float32)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


class P2ELoss(nn.Module):
    """Proxy-to-embedding alignment (paper Eq. 4).

    With ``m_{t,c} = (2·w_{t,c} − 1)·ā_{t,c}`` over the ``T`` tokens of all leading dims:

    * ``form="code"`` (default, ``Zyh55555/SCDL:networks/SCDL.py``, where
      ``pos_mean − neg_mean = (2w−1)·ā``): ``ℓ_c = (1/T) Σ_t exp(−m_{t,c})``;
    * ``form="paper"`` (Eq. 4, expectation inside the exponential): ``ℓ_c = exp(−(1/T) Σ_t m_{t,c})``;
    * ``balanced=True`` (code form only; this project's option for small classes): each class's
      positive and negative token mass are normalised separately,
      ``ℓ_c = ½ [Σ_t w e^{−ā} / Σ_t w + Σ_t (1−w) e^{ā} / Σ_t (1−w)]`` — for hard weights the mean
      of ``e^{−ā}`` over the class's tokens plus the mean of ``e^{ā}`` over the others, so a class
      that fills 1% of the tokens is pulled as hard as one that fills 50%. A class without positive
      (or negative) mass keeps only the other half.

    The loss is ``mean_c ℓ_c`` (``reduction="mean"``). Eq. 4 literally uses ``P(c|t)`` as the
    weight and ``cos(ẑ_t, μ̂_c)`` as the similarity: pass ``SCDLOutput.probs`` and
    ``SCDLOutput.similarity`` for that reading.

    Args:
        form: ``"code"`` or ``"paper"``.
        reduction: over classes: ``"mean"``, ``"sum"`` or ``"none"`` (a ``(C,)`` tensor).
        balanced: class-balanced positive/negative normalisation (code form).

    Raises:
        ValueError: unknown ``form``/``reduction``, ``balanced`` with the paper form.

    Example:
        >>> a = torch.tensor([[0.5, -0.5], [0.2, 0.8]]); w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(P2ELoss("paper")(a, w).item(), 4)  # (exp(-0.15) + exp(-0.65)) / 2
        0.6914
    """

    def __init__(self, form: str = "code", reduction: str = "mean", balanced: bool = False) -> None:
        super().__init__()
        self.form = look_up(form, LOSS_FORMS, "form", "P2ELoss")
        self.reduction = look_up(reduction, REDUCTIONS, "reduction", "P2ELoss")
        if not isinstance(balanced, bool):
            raise ValueError(f"P2ELoss: `balanced` must be a bool, got {balanced!r}.")
        if balanced and self.form != "code":
            raise ValueError("P2ELoss: `balanced=True` is defined for form='code' only.")
        self.balanced = balanced

    def forward(self, assignment: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Loss from token-class similarities and weights.

        Args:
            assignment: ``ā`` (code) — any ``(..., C)`` similarity, e.g. ``(B, L, C)``.
            weights: ``w`` of the same shape (detach unlabeled weights before calling; the
                weight functions of :mod:`scdl_monai.networks.class_distribution` already do).
            mask: optional ``(...)`` bool/0-1 tensor of the tokens that take part (e.g. tokens with
                a confident pseudo-label); ``None`` = all.

        Returns:
            Scalar, or ``(C,)`` for ``reduction="none"``.

        Raises:
            TypeError/ValueError: non-tensors or mismatched shapes.
        """
        _check_pair("P2ELoss", ("assignment", "weights"), assignment, weights)
        num_classes = assignment.shape[-1]
        a = assignment.float().reshape(-1, num_classes)
        w = weights.float().reshape(-1, num_classes)
        m = _token_mask("P2ELoss", mask, assignment).reshape(-1, 1)
        if self.balanced:
            tiny = torch.finfo(a.dtype).tiny
            pos_mass, neg_mass = (w * m).sum(dim=0), ((1.0 - w) * m).sum(dim=0)
            pos = (w * m * torch.exp(-a)).sum(dim=0) / pos_mass.clamp_min(tiny)
            neg = ((1.0 - w) * m * torch.exp(a)).sum(dim=0) / neg_mass.clamp_min(tiny)
            parts = (pos_mass > 0).float() + (neg_mass > 0).float()
            per_class = (pos + neg) / parts.clamp_min(1.0)
            return _reduce(per_class, self.reduction)
        margin = (2.0 * w - 1.0) * a
        count = m.sum().clamp_min(1.0)
        if self.form == "code":
            per_class = (torch.exp(-margin) * m).sum(dim=0) / count
        else:
            per_class = torch.exp(-(margin * m).sum(dim=0) / count)
        return _reduce(per_class, self.reduction)


class E2PLoss(nn.Module):
    """Embedding-to-proxy alignment (paper Eq. 3).

    * ``form="code"`` (default, ``Zyh55555/SCDL:networks/SCDL.py`` ``dist_loss``): on the proxy
      samples, ``ℓ_t = Σ_c w_{t,c}·(1 − ā_{t,c})`` — needs ``assignment`` and ``weights``;
    * ``form="paper"`` (Eq. 3): on the proxy means with the soft assignment,
      ``ℓ_t = Σ_c P(c|t)·(1 − cos(ẑ_t, μ̂_c))`` — needs ``similarity`` and ``probs`` (``weights``
      is not used). ``probs`` is not detached: Eq. 3 lets the gradient flow through ``P``.

    The loss is ``mean_t ℓ_t`` over all tokens. The paper writes a *sum* over tokens
    (``Σ_i Σ_l``), which is ``B·L`` times larger and would tie the loss weight to the patch size;
    ``reduction="sum"`` gives that scale.

    Args:
        form: ``"code"`` or ``"paper"``.
        reduction: over tokens: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(...)``, the input
            without its class dim).

    Raises:
        ValueError: unknown ``form``/``reduction``.

    Example:
        >>> a = torch.tensor([[0.5, -0.5], [0.2, 0.8]]); w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(E2PLoss()(a, w).item(), 4)  # ((1 - 0.5) + (1 - 0.8)) / 2
        0.35
    """

    def __init__(self, form: str = "code", reduction: str = "mean") -> None:
        super().__init__()
        self.form = look_up(form, LOSS_FORMS, "form", "E2PLoss")
        self.reduction = look_up(reduction, REDUCTIONS, "reduction", "E2PLoss")

    def forward(
        self,
        assignment: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        similarity: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss from the tensors its ``form`` needs (see the class docstring).

        Args:
            assignment: ``ā``, ``(..., C)`` (code form).
            weights: ``w``, same shape (code form).
            similarity: ``cos(ẑ, μ̂)``, ``(..., C)`` (paper form).
            probs: ``P(c|t)``, same shape (paper form).
            mask: optional ``(...)`` tokens that take part (mean over them); ``None`` = all.

        Raises:
            ValueError: a tensor the form needs is missing, or shapes differ.
        """
        if self.form == "code":
            names, (dist_src, weight) = ("assignment", "weights"), (assignment, weights)
        else:
            names, (dist_src, weight) = ("similarity", "probs"), (similarity, probs)
        missing = [n for n, t in zip(names, (dist_src, weight)) if t is None]
        if missing:
            raise ValueError(f"E2PLoss(form={self.form!r}) needs `{names[0]}` and `{names[1]}`; missing {missing}.")
        _check_pair("E2PLoss", names, dist_src, weight)
        per_token = (weight.float() * (1.0 - dist_src.float())).sum(dim=-1)
        if mask is None:
            return _reduce(per_token, self.reduction)
        m = _token_mask("E2PLoss", mask, dist_src)
        if self.reduction == "mean":
            return (per_token * m).sum() / m.sum().clamp_min(1.0)
        return _reduce(per_token * m, self.reduction)


class ProxyLoss(nn.Module):
    """CDBA proxy loss ``L_p2e + e2p_weight · L_e2p`` (reference weight 0.1).

    Args:
        e2p_weight: weight of the E2P term (reference ``dist_loss_weight=0.1``).
        p2e_form: form of :class:`P2ELoss`.
        e2p_form: form of :class:`E2PLoss`.
        balanced_p2e: class-balanced P2E (see :class:`P2ELoss`).

    Raises:
        ValueError: negative ``e2p_weight`` or unknown forms.

    Example:
        >>> a = torch.tensor([[0.5, -0.5], [0.2, 0.8]]); w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> total = ProxyLoss()(a, w)  # P2ELoss()(a, w) + 0.1 * E2PLoss()(a, w)
    """

    def __init__(
        self, e2p_weight: float = 0.1, p2e_form: str = "code", e2p_form: str = "code", balanced_p2e: bool = False
    ) -> None:
        super().__init__()
        if isinstance(e2p_weight, bool) or not isinstance(e2p_weight, (int, float)) or e2p_weight < 0:
            raise ValueError(f"ProxyLoss: `e2p_weight` must be a non-negative number, got {e2p_weight!r}.")
        self.e2p_weight = float(e2p_weight)
        self.p2e = P2ELoss(form=p2e_form, balanced=balanced_p2e)
        self.e2p = E2PLoss(form=e2p_form)

    def terms(
        self,
        assignment: torch.Tensor,
        weights: torch.Tensor,
        similarity: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two unweighted terms ``(L_p2e, L_e2p)`` (for logging)."""
        return self.p2e(assignment, weights, mask), self.e2p(assignment, weights, similarity, probs, mask)

    def forward(
        self,
        assignment: torch.Tensor,
        weights: torch.Tensor,
        similarity: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar proxy loss; ``similarity``/``probs`` are needed only when ``e2p_form="paper"``."""
        p2e, e2p = self.terms(assignment, weights, similarity, probs, mask)
        return p2e + self.e2p_weight * e2p


class SACLoss(nn.Module):
    """Semantic anchor constraint (paper Eq. 9).

    ``L_SAC = mean_{c present} (1 − cos(μ_c, anchor_c))``. The anchors are detached inside, so only
    ``μ`` receives gradient (paper §2.2). The paper averages over all ``C`` classes; classes absent
    from the labeled batch have no anchor, so — as in the reference — the mean runs over the
    present ones. With no class present the loss is a zero that still backpropagates.

    Args:
        reduction: ``"mean"`` (over present classes), ``"sum"`` or ``"none"`` (``(C,)``, zero for
            absent classes).

    Example:
        >>> mu = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); anchors = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
        >>> SACLoss()(mu, anchors).item()
        0.5
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = look_up(reduction, REDUCTIONS, "reduction", "SACLoss")

    def forward(self, mu: torch.Tensor, anchors: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Loss between proxy means and class anchors.

        Args:
            mu: proxy means ``(C, D)`` (``SCDLOutput.mu``).
            anchors: ``(C, D)``, e.g. from :func:`sac_anchors_feature_pool`; detached here.
            present: optional ``(C,)`` bool mask of classes that have an anchor; ``None`` = all.

        Raises:
            TypeError/ValueError: non-tensors or mismatched shapes.
        """
        _check_pair("SACLoss", ("mu", "anchors"), mu, anchors)
        if mu.ndim != 2:
            raise ValueError(f"SACLoss: `mu` and `anchors` must be (C, D), got {tuple(mu.shape)}.")
        if present is None:
            present = torch.ones(mu.shape[0], dtype=torch.bool, device=mu.device)
        elif not isinstance(present, torch.Tensor) or tuple(present.shape) != (mu.shape[0],):
            shape = tuple(present.shape) if isinstance(present, torch.Tensor) else type(present).__name__
            raise ValueError(f"SACLoss: `present` must be a (C,) = ({mu.shape[0]},) bool tensor, got {shape}.")
        present = present.to(device=mu.device, dtype=torch.bool)
        per_class = (1.0 - F.cosine_similarity(mu.float(), anchors.detach().float(), dim=-1)) * present
        if self.reduction == "none":
            return per_class
        if self.reduction == "sum":
            return per_class.sum()
        return per_class.sum() / present.sum().clamp_min(1)


def _pool_instances(tokens: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-instance class embeddings ``normalize(Σ_t w z / Σ_t w)`` ``(N, C, D)`` and presence ``(N, C)``."""
    mass = weights.sum(dim=1)  # (N, C)
    pooled = torch.einsum("nlc,nld->ncd", weights, tokens) / mass.clamp_min(torch.finfo(tokens.dtype).tiny)[..., None]
    return F.normalize(pooled, dim=-1), mass > 0


def _average_instances(embeddings: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over instances of the present unit embeddings, re-normalised: ``(C, D)``, ``(C,)``."""
    count = present.sum(dim=0)  # (C,)
    summed = (embeddings * present[..., None]).sum(dim=0)
    anchors = F.normalize(summed / count.clamp_min(1)[:, None], dim=-1)
    return anchors, count > 0


def sac_anchors_feature_pool(tokens_z: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class anchors from the normal forward's tokens, weighted by ground truth (cheap default).

    For every labeled sample ``b`` and class ``c`` with ``Σ_t w_{b,t,c} > 0`` the class embedding is
    the ``w``-weighted mean of the sample's tokens, L2-normalised; ``anchor_c`` is the mean of these
    over samples, L2-normalised (per-instance normalisation as in the reference's anchor branch;
    the final normalisation does not change the cosine). The cheap alternative to
    :func:`sac_anchors_masked_image`: no extra forward passes.

    Args:
        tokens_z: token embeddings ``(B, L, D)`` (``SCDLOutput.z`` of the labeled samples).
        weights: GT token weights ``(B, L, C)`` from
            :func:`~scdl_monai.networks.class_distribution.token_weights_from_labels`.

    Returns:
        ``(anchors (C, D), present (C,) bool)``; detached; absent classes have zero anchors.

    Raises:
        ValueError: shapes that do not match.

    Example:
        >>> z = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])
        >>> w = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
        >>> sac_anchors_feature_pool(z, w)[0]
        tensor([[1.0000, 0.0000],
                [0.6000, 0.8000]])
    """
    if not isinstance(tokens_z, torch.Tensor) or not isinstance(weights, torch.Tensor):
        raise TypeError("sac_anchors_feature_pool: `tokens_z` and `weights` must be tensors.")
    if tokens_z.ndim != 3 or weights.ndim != 3 or tokens_z.shape[:2] != weights.shape[:2]:
        raise ValueError(
            f"sac_anchors_feature_pool: `tokens_z` must be (B, L, D) and `weights` (B, L, C) with the same "
            f"B and L, got {tuple(tokens_z.shape)} and {tuple(weights.shape)}."
        )
    with torch.no_grad():
        embeddings, present = _pool_instances(tokens_z.detach().float(), weights.detach().float())
        return _average_instances(embeddings, present)


def _as_token_list(z: torch.Tensor, spatial_dims: int, token_shape, num_images: int) -> tuple[torch.Tensor, tuple]:
    if z.ndim == spatial_dims + 2:  # (N, D, *grid) map
        return z.flatten(2).transpose(1, 2), tuple(z.shape[2:])
    if z.ndim == 3:
        if token_shape is None:
            raise ValueError(
                "sac_anchors_masked_image: `encode_fn` returned (N, L, D) tokens; pass `token_shape` "
                "(the token grid) so the label can be pooled to it."
            )
        grid = tuple(int(s) for s in token_shape)
        if len(grid) != spatial_dims or z.shape[1] != math.prod(grid):
            raise ValueError(
                f"sac_anchors_masked_image: `token_shape` {grid} does not match the {z.shape[1]} tokens "
                f"returned by `encode_fn` for {spatial_dims}-D images."
            )
        return z, grid
    raise ValueError(
        f"sac_anchors_masked_image: `encode_fn` must return (N, D, *grid) or (N, L, D), got {tuple(z.shape)} "
        f"for {num_images} images."
    )


def _modules_of(encode_fn, modules) -> list[nn.Module]:
    if modules is not None:
        found = [modules] if isinstance(modules, nn.Module) else list(modules)
        bad = [m for m in found if not isinstance(m, nn.Module)]
        if bad:
            raise TypeError(f"sac_anchors_masked_image: `modules` must hold nn.Modules, got {type(bad[0]).__name__}.")
        return found
    if isinstance(encode_fn, nn.Module):
        return [encode_fn]
    owner = getattr(encode_fn, "__self__", None)
    if isinstance(owner, nn.Module):
        return [owner]
    raise ValueError(
        "sac_anchors_masked_image: cannot find the networks behind `encode_fn` (a plain function/lambda); "
        "pass them as `modules=` so their normalisation layers can be put in eval mode."
    )


def sac_anchors_masked_image(
    encode_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    modules: nn.Module | Iterable[nn.Module] | None = None,
    token_shape: Sequence[int] | None = None,
    include_background: bool = True,
    eval_dropout: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class anchors from class-masked images through the shared encoder (paper §2.2, Eq. 8).

    For every labeled sample ``b`` and present class ``c``: the image is multiplied by
    ``(label_b == c)`` (everything else set to 0), encoded by ``encode_fn``, and the resulting
    tokens are averaged inside the class region — weighted by the class's area fraction per token,
    exactly as :func:`sac_anchors_feature_pool` — and L2-normalised; ``anchor_c`` is the mean over
    instances, L2-normalised. The anchors are detached (paper: SAC updates only the proxies), so the
    masked forwards run under :func:`torch.no_grad` with every normalisation layer with running
    statistics (BatchNorm/InstanceNorm) in eval mode — masked images would otherwise corrupt the
    running statistics. Modes are restored afterwards, also on error.

    Args:
        encode_fn: callable mapping images ``(N, C_in, *spatial)`` to token embeddings, either a map
            ``(N, D, *grid)`` or tokens ``(N, L, D)`` (then give ``token_shape``), e.g.
            ``lambda x: scdl(extractor(net.encode(x)[3])).z``.
        images: labeled images ``(B, C_in, *spatial)``.
        labels: class indices ``(B, 1, *spatial)`` (integer, or float holding integers).
        num_classes: ``C``.
        modules: the networks used by ``encode_fn`` (whose norm layers are switched to eval); may be
            omitted when ``encode_fn`` is an ``nn.Module`` or a bound method of one.
        token_shape: token grid, required when ``encode_fn`` returns ``(N, L, D)``.
        include_background: build an anchor for class 0 too (the background has a proxy).
        eval_dropout: also put dropout layers in eval mode.
        chunk_size: masked images per forward; ``None`` = all at once.

    Returns:
        ``(anchors (C, D), present (C,) bool)``; detached; absent classes have zero anchors (with no
        class present, one zero image is encoded just to learn ``D``).

    Raises:
        TypeError/ValueError: mismatched images/labels, unknown modules, bad encoder output.
    """
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("sac_anchors_masked_image: `images` and `labels` must be tensors.")
    if images.ndim < 3 or labels.shape != (images.shape[0], 1, *images.shape[2:]):
        raise ValueError(
            f"sac_anchors_masked_image: `labels` must be (B, 1, *spatial) matching `images` (B, C_in, *spatial), "
            f"got {tuple(labels.shape)} and {tuple(images.shape)}."
        )
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"sac_anchors_masked_image: `chunk_size` must be a positive int or None, got {chunk_size!r}.")
    check_number(num_classes, "num_classes", "sac_anchors_masked_image", integer=True, minimum=1)
    nets = _modules_of(encode_fn, modules)
    spatial_dims = images.ndim - 2
    if hasattr(labels, "as_tensor"):  # MONAI MetaTensor -> plain tensors
        labels = labels.as_tensor()
    if hasattr(images, "as_tensor"):
        images = images.as_tensor()
    labels = labels.round().long() if labels.dtype.is_floating_point else labels.long()
    first = 0 if include_background else 1
    flat = labels.flatten(1)
    is_present = torch.stack([(flat == c).any(dim=1) for c in range(num_classes)], dim=1).tolist()  # one sync
    present_pairs = [(b, c) for b in range(images.shape[0]) for c in range(first, num_classes) if is_present[b][c]]

    switch = _NORM_LAYERS + (_DROPOUT_LAYERS if eval_dropout else ())
    layers = [m for net in nets for m in net.modules() if isinstance(m, switch)]
    modes = [m.training for m in layers]
    step = chunk_size or max(len(present_pairs), 1)
    try:
        for m in layers:
            m.eval()
        with torch.no_grad():
            embeddings, rows = [], []
            if not present_pairs:  # e.g. foreground-only anchors on an all-background patch
                z, _ = _as_token_list(encode_fn(images[:1] * 0), spatial_dims, token_shape, 1)
                empty = z.new_zeros(num_classes, z.shape[-1], dtype=torch.float32)
                return empty, torch.zeros(num_classes, dtype=torch.bool, device=z.device)
            for start in range(0, len(present_pairs), step):
                pairs = present_pairs[start : start + step]
                idx = torch.tensor([b for b, _ in pairs], device=images.device)
                cls = torch.tensor([c for _, c in pairs], device=images.device)
                sel_labels = labels[idx]
                class_view = cls.view(-1, *([1] * (labels.ndim - 1)))
                masked = images[idx] * (sel_labels == class_view).to(images.dtype)
                z, grid = _as_token_list(encode_fn(masked), spatial_dims, token_shape, len(pairs))
                w = token_weights_from_labels(sel_labels, num_classes, grid).to(z.device)
                emb, _ = _pool_instances(z.float(), w)  # (n, C, D)
                embeddings.append(emb[torch.arange(len(pairs), device=emb.device), cls.to(emb.device)])
                rows.append(cls.to(emb.device))
    finally:
        for m, mode in zip(layers, modes):
            m.train(mode)

    emb = torch.cat(embeddings)  # (P, D)
    cls = torch.cat(rows)
    onehot = F.one_hot(cls, num_classes).bool()  # (P, C)
    return _average_instances(emb[:, None, :].expand(-1, num_classes, -1), onehot)
