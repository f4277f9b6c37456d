"""The semantic-knowledge-complementarity (SKC) module of SKCDF, dimension-generic.

Zhang, Yin et al., "A Semantic Knowledge Complementarity based Decoupling Framework for
Semi-supervised Class-imbalanced Medical Image Segmentation", CVPR 2025 (docs/methods.md#skcdf).
Reference: ``yinguanchun/SKCDF@12f807d:SKCDF/code/models/SKCDF.py`` (below ``SKCDF.py:N``); the
self-attention ablation: ``Self_Attention/Self_Attention.py`` at the same commit.

The module sits on the bottleneck feature ``x5`` (``(B, C, *spatial)``) of a VNet and applies a
**local block** then a **global block** (``SKCDF.py:738-746,758-759``). Both share one attention
core, :class:`ChannelAttention`, in which the tokens are **channels**: a token set is ``N``
positions × ``C`` channels, and the score matrix compares the ``H·C`` projected channels with each
other (AllSpark-style channel attention, ``xmed-lab/AllSpark:model/semseg/allspark.py``):

* projections ``W_q, W_k, W_v``: ``Linear(C, H·C)`` without bias, ``W_o``: ``Linear(H·C, C)``
  without bias, all Xavier-uniform (``SKCDF.py:259-281,441-464``); ``H = num_heads`` (2);
* the scores are **not** scaled by ``1/√d``: each score matrix is standardised over all of its
  entries (instance norm without affine, biased variance, ``eps`` 1e-5; ``nn.InstanceNorm2d(1)``
  in the reference), then softmax over the keys, dropout 0.1 on the attention, ``W_o``, dropout 0.1;
* **cross mode** (the labeled pass, batch ``[L; U]`` with ``P`` samples each): a query sample of one
  group attends to the concatenation (along the projected features) of the keys/values of *all*
  samples of the other group, heads not separated: ``A_i = softmax(IN(Q_iᵀ K)) ∈ R^{HC × P·HC}``,
  ``out_i = W_o (A_i Vᵀ)ᵀ`` (``SKCDF.py:292-368,478-573``). The unlabeled tokens are detached in
  both directions: labeled queries see detached unlabeled keys/values, and unlabeled (detached)
  queries see labeled keys/values with gradient (``SKCDF.py:297,331-332,482,533-534``), so the
  labeled outputs send no gradient into the unlabeled inputs. The output keeps the order ``[L; U]``;
* **self mode** (the unlabeled pass, validation, inference): per sample and head ``h``,
  ``A_h = softmax(IN(Q_hᵀ K_h)) ∈ R^{C × C}``, ``out = W_o concat_h(A_h V_hᵀ)ᵀ``
  (``SKCDF.py:369-386,575-617``). How the ``H·C`` projected features are split into heads and
  merged back is a reference detail kept behind switches: the local block splits and merges with the
  head index inner (feature ``c·H + h``); the global block splits into contiguous halves
  (``h·C + c``) but merges interleaved (``c·H + h``) before ``W_o`` — quirk Q1, which
  ``global_self_head_layout="consistent"`` replaces by a contiguous merge. The local block's self
  mode has no output dropout (``SKCDF.py:615-617``, quirk Q8).

Global block (``SKCDF.py:219-236,389-439``): every channel's map of ``T = prod(spatial)`` voxels
goes through one shared affine map ``T -> T`` (a convolution ``1 -> T`` whose kernel is the whole
map), giving ``T`` learned tokens per channel; ``X ← X + Attn(LN₁ X)``, ``Z = LN₂(X)`` (no MLP, no
second residual), token ``n`` back to voxel ``n`` in raster order, then ``Conv1 + GELU``. It is
built for one bottleneck size (``spatial_size``, e.g. 4×8×8 for 64×128×128 patches).

Local block (``SKCDF.py:239-256,620-668``): non-overlapping windows of ``window_size`` (2) per axis.
A shared convolution ``1 -> prod(window)`` with kernel = stride = window remixes each window's
voxels (the output channel ``o`` is read as sub-position ``o`` in raster order); this remix, put
back on the grid, is the residual ``R``. Attention runs per window index (a token set is the
window's positions × ``C`` channels; in cross mode window ``w`` of a sample attends to window
``w`` of every sample of the other group); then ``LN₂(R + attn)``, ``Conv1 + GELU``.

LayerNorms: ``LayerNorm(C, eps=1e-6)`` over channels. The reference builds a ``map_in``
convolution in each token learner that is never called (``SKCDF.py:230,250``); it is kept by
default so reference state dicts load (``unused_token_params``, quirk Q10) — it never receives a
gradient (DDP then needs ``find_unused_parameters=True``).

The reference hard-codes the 4×8×8 bottleneck and two samples per group in its ``einops``
patterns (``SKCDF.py:499-506``); here every size is derived from the input and validated.
In eval mode the reference duplicates the batch inside each block and keeps the first half, which
changes nothing in self mode; it is not reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

from scdl_monai.data.utils import check_number, look_up

__all__ = [
    "ATTENTION_MODES",
    "HEAD_LAYOUTS",
    "SKC_BLOCKS",
    "SKC_FUSIONS",
    "ChannelAttention",
    "GlobalComplementarityBlock",
    "LocalComplementarityBlock",
    "SKCModule",
    "standardize_scores",
]

#: ``"cross"``: batch ``[L; U]``, each group attends to the other; ``"self"``: per sample.
ATTENTION_MODES = ("cross", "self")
#: How the ``H·C`` projected features are split into / merged from heads in self mode:
#: ``"interleaved"`` = feature ``c·H + h``, ``"contiguous"`` = feature ``h·C + c``.
HEAD_LAYOUTS = ("interleaved", "contiguous")
#: Blocks of :class:`SKCModule`.
SKC_BLOCKS = ("local", "global")
#: How several blocks are combined: one after the other, or each on ``x`` with the outputs summed.
SKC_FUSIONS = ("sequential", "parallel_sum")

_LN_EPS = 1e-6  # SKCDF.py:394-397,626-629
_IN_EPS = 1e-5  # nn.InstanceNorm2d default (SKCDF.py:273,456)


def standardize_scores(scores: torch.Tensor, eps: float = _IN_EPS) -> torch.Tensor:
    """Standardise each score matrix over all its entries: ``(S − mean(S)) / sqrt(var(S) + eps)``.

    The reference's ``nn.InstanceNorm2d(1)`` on ``(…, M, K)`` score maps (no affine, biased
    variance); ``F.instance_norm`` is the same computation.

    Args:
        scores: ``(*batch, M, K)``.
        eps: added to the variance.

    Returns:
        Tensor of the same shape.
    """
    m, k = scores.shape[-2:]
    flat = scores.reshape(-1, 1, m, k)
    return F.instance_norm(flat, eps=eps).reshape(scores.shape)


class ChannelAttention(nn.Module):
    """Channel-wise attention core shared by the SKC blocks (module docstring; ``SKCDF.py:259-617``).

    Token sets are ``(B, S, N, C)``: ``B`` samples, ``S`` independent sets per sample (windows of
    the local block; 1 for the global block), ``N`` positions, ``C`` channels (the tokens).

    Args:
        channels: ``C``.
        num_heads: ``H``; the projections have ``H·C`` features (reference 2).
        dropout: dropout on the attention matrix and on the output (reference 0.1).
        self_head_split: how self mode splits the projections into heads (:data:`HEAD_LAYOUTS`).
        self_head_merge: how self mode lays out the heads before ``W_o``.
        self_proj_dropout: apply the output dropout in self mode (cross mode always does).

    Raises:
        ValueError: invalid sizes, probabilities or layouts.

    Example:
        >>> attn = ChannelAttention(channels=4, num_heads=2)
        >>> attn(torch.randn(4, 1, 3, 4), "cross").shape
        torch.Size([4, 1, 3, 4])
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 2,
        dropout: float = 0.1,
        self_head_split: str = "interleaved",
        self_head_merge: str = "interleaved",
        self_proj_dropout: bool = True,
    ) -> None:
        super().__init__()
        check_number(channels, "channels", "ChannelAttention", integer=True, minimum=1)
        check_number(num_heads, "num_heads", "ChannelAttention", integer=True, minimum=1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"ChannelAttention: `dropout` must be a probability in [0, 1], got {dropout!r}.")
        self.channels = channels
        self.num_heads = num_heads
        self.self_head_split = look_up(self_head_split, HEAD_LAYOUTS, "self_head_split", "ChannelAttention")
        self.self_head_merge = look_up(self_head_merge, HEAD_LAYOUTS, "self_head_merge", "ChannelAttention")
        self.self_proj_dropout = bool(self_proj_dropout)
        width = channels * num_heads
        self.q = nn.Linear(channels, width, bias=False)
        self.k = nn.Linear(channels, width, bias=False)
        self.v = nn.Linear(channels, width, bias=False)
        self.out = nn.Linear(width, channels, bias=False)
        self.attn_dropout = nn.Dropout(dropout)
        self.proj_dropout = nn.Dropout(dropout)
        for linear in (self.q, self.k, self.v, self.out):
            nn.init.xavier_uniform_(linear.weight)  # SKCDF.py:404-408 (_init_weights)

    # ------------------------------------------------------------------ modes
    def cross(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Each query sample attends to all ``context`` samples of the same set index.

        Args:
            query: ``(P, S, N, C)`` normalised tokens of the querying group.
            context: ``(P_k, S, N, C)`` normalised tokens of the other group (keys and values).

        Returns:
            ``(P, S, N, C)``.
        """
        p_k, sets, n, _ = context.shape
        q = self.q(query)  # (P, S, N, HC)
        # keys/values of all context samples side by side along the features: (S, N, P_k·HC),
        # sample-major as the reference's rearrange 'b n c -> n (b c)'
        k = self.k(context).permute(1, 2, 0, 3).reshape(sets, n, -1)
        v = self.v(context).permute(1, 2, 0, 3).reshape(sets, n, -1)
        scores = torch.einsum("psnq,snk->psqk", q, k)  # (P, S, HC, P_k·HC)
        attn = self.attn_dropout(torch.softmax(standardize_scores(scores), dim=-1))
        mixed = torch.einsum("psqk,snk->psnq", attn, v)  # (P, S, N, HC)
        return self.proj_dropout(self.out(mixed))

    def _heads(self, x: torch.Tensor, layout: str) -> torch.Tensor:
        """``(…, H·C)`` -> ``(…, H, C)`` under ``layout``."""
        h, c = self.num_heads, self.channels
        if layout == "contiguous":
            return x.reshape(*x.shape[:-1], h, c)
        return x.reshape(*x.shape[:-1], c, h).transpose(-1, -2)

    def _merge(self, x: torch.Tensor, layout: str) -> torch.Tensor:
        """``(…, H, C)`` -> ``(…, H·C)`` under ``layout``."""
        if layout == "contiguous":
            return x.reshape(*x.shape[:-2], -1)
        return x.transpose(-1, -2).reshape(*x.shape[:-2], -1)

    def self_attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per sample, set and head: ``A_h = softmax(IN(Q_hᵀ K_h))``; ``(B, S, N, C) -> (B, S, N, C)``."""
        q = self._heads(self.q(tokens), self.self_head_split)  # (B, S, N, H, C)
        k = self._heads(self.k(tokens), self.self_head_split)
        v = self._heads(self.v(tokens), self.self_head_split)
        scores = torch.einsum("bsnhc,bsnhd->bshcd", q, k)  # (B, S, H, C, C)
        attn = self.attn_dropout(torch.softmax(standardize_scores(scores), dim=-1))
        mixed = torch.einsum("bshcd,bsnhd->bsnhc", attn, v)  # (B, S, N, H, C)
        out = self.out(self._merge(mixed, self.self_head_merge))
        return self.proj_dropout(out) if self.self_proj_dropout else out

    def forward(self, tokens: torch.Tensor, mode: str, detach_unlabeled: bool = True) -> torch.Tensor:
        """Attention in ``mode`` on normalised tokens ``(B, S, N, C)``.

        Args:
            tokens: ``(B, S, N, C)``; in cross mode the first half of the batch is labeled, the
                second half unlabeled (equal halves).
            mode: ``"cross"`` or ``"self"``.
            detach_unlabeled: cross mode only: detach the unlabeled tokens in both directions
                (reference, quirk Q5); False lets gradient flow between the groups.

        Returns:
            ``(B, S, N, C)`` (cross mode: labeled outputs first).

        Raises:
            ValueError: bad shape, unknown mode, or an odd batch in cross mode.
        """
        if tokens.ndim != 4 or tokens.shape[-1] != self.channels:
            raise ValueError(
                f"ChannelAttention: tokens must be (B, S, N, C={self.channels}), got {tuple(tokens.shape)}."
            )
        mode = look_up(mode, ATTENTION_MODES, "mode", "ChannelAttention")
        if mode == "self":
            return self.self_attention(tokens)
        batch = tokens.shape[0]
        if batch < 2 or batch % 2:
            raise ValueError(
                "ChannelAttention: cross mode needs a batch of P labeled then P unlabeled samples "
                f"(an even batch >= 2), got {batch}; use equal labeled and unlabeled batch sizes."
            )
        labeled, unlabeled = tokens[: batch // 2], tokens[batch // 2 :]
        context_u = unlabeled.detach() if detach_unlabeled else unlabeled
        out_l = self.cross(labeled, context_u)  # l -> u
        out_u = self.cross(context_u, labeled)  # u -> l (queries detached in the reference)
        return torch.cat([out_l, out_u], dim=0)


def _as_tuple(value, spatial_dims: int, name: str, owner: str) -> tuple[int, ...]:
    values = (value,) * spatial_dims if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(values) != spatial_dims:
        raise ValueError(f"{owner}: `{name}` must have {spatial_dims} entries, got {value!r}.")
    for v in values:
        check_number(v, name, owner, integer=True, minimum=1)
    return tuple(int(v) for v in values)


class _Block(nn.Module):
    """Shared parts of the two blocks: the attention core, both LayerNorms and ``map_out``."""

    def __init__(self, spatial_dims, channels, num_heads, dropout, head_split, head_merge, self_proj_dropout):
        super().__init__()
        if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3):
            raise ValueError(f"{type(self).__name__}: `spatial_dims` must be 1, 2 or 3, got {spatial_dims!r}.")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.attn_norm = nn.LayerNorm(channels, eps=_LN_EPS)
        self.attn = ChannelAttention(channels, num_heads, dropout, head_split, head_merge, self_proj_dropout)
        self.ffn_norm = nn.LayerNorm(channels, eps=_LN_EPS)
        self.map_out = nn.Sequential(Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=1), nn.GELU())

    def _add_token_learner(self, outputs: int, kernel: tuple[int, ...], unused_token_params: bool) -> None:
        """``token_learner``: a convolution ``1 -> outputs`` with kernel = stride = ``kernel``, applied to
        every channel's map; ``map_in``: the reference's never-called twin (+ GELU), kept for Q10."""
        conv = Conv[Conv.CONV, self.spatial_dims]
        self.token_learner = conv(1, outputs, kernel_size=kernel, stride=kernel)
        self.map_in = nn.Sequential(conv(1, outputs, kernel_size=kernel, stride=kernel), nn.GELU()) if unused_token_params else None

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != self.spatial_dims + 2 or x.shape[1] != self.channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__}: input must be (B, {self.channels}, *spatial) with "
                f"{self.spatial_dims} spatial dims, got {got}."
            )


class GlobalComplementarityBlock(_Block):
    """SKC global block: learned tokens over the whole bottleneck (``SKCDF.py:219-236,389-439``).

    Args:
        channels: ``C`` of the bottleneck (``16·n_filters``; 512 in the reference).
        spatial_size: bottleneck spatial size the token learner is built for (4, 8, 8 at 64×128×128).
        spatial_dims: 1, 2 or 3.
        num_heads, dropout: see :class:`ChannelAttention`.
        self_head_layout: ``"reference"`` (contiguous split, interleaved merge: Q1) or ``"consistent"``.
        unused_token_params: build the reference's never-used ``map_in`` (Q10).

    Raises:
        ValueError: invalid sizes or options; in ``forward``, an input of another spatial size.

    Example:
        >>> block = GlobalComplementarityBlock(channels=8, spatial_size=(2, 2, 2))
        >>> block(torch.randn(2, 8, 2, 2, 2), "cross").shape
        torch.Size([2, 8, 2, 2, 2])
    """

    def __init__(
        self,
        channels: int,
        spatial_size: Sequence[int] | int,
        spatial_dims: int = 3,
        num_heads: int = 2,
        dropout: float = 0.1,
        self_head_layout: str = "reference",
        unused_token_params: bool = True,
    ) -> None:
        layout = look_up(self_head_layout, ("reference", "consistent"), "self_head_layout", "GlobalComplementarityBlock")
        merge = "interleaved" if layout == "reference" else "contiguous"
        super().__init__(spatial_dims, channels, num_heads, dropout, "contiguous", merge, True)
        self.spatial_size = _as_tuple(spatial_size, spatial_dims, "spatial_size", "GlobalComplementarityBlock")
        self.num_tokens = math.prod(self.spatial_size)
        self._add_token_learner(self.num_tokens, self.spatial_size, unused_token_params)

    def forward(self, x: torch.Tensor, mode: str = "self", detach_unlabeled: bool = True) -> torch.Tensor:
        """``(B, C, *spatial_size) -> (B, C, *spatial_size)``; ``mode``/``detach_unlabeled`` as in :class:`ChannelAttention`."""
        self._check(x)
        if tuple(x.shape[2:]) != self.spatial_size:
            raise ValueError(
                f"GlobalComplementarityBlock: built for a bottleneck of spatial size {self.spatial_size}, got "
                f"{tuple(x.shape[2:])}; the patch size must be 16 × spatial_size."
            )
        b, c = x.shape[:2]
        tokens = self.token_learner(x.reshape(b * c, 1, *self.spatial_size)).reshape(b, c, self.num_tokens)
        tokens = tokens.transpose(1, 2)  # (B, T, C): T learned tokens of C channels
        attended = self.attn(self.attn_norm(tokens).unsqueeze(1), mode, detach_unlabeled).squeeze(1)
        z = self.ffn_norm(attended + tokens)
        return self.map_out(z.transpose(1, 2).reshape(b, c, *self.spatial_size))  # token n -> voxel n


class LocalComplementarityBlock(_Block):
    """SKC local block: attention inside non-overlapping windows (``SKCDF.py:239-256,620-668``).

    Args:
        channels: ``C`` of the bottleneck.
        spatial_dims: 1, 2 or 3.
        window_size: window per axis (reference 2); every spatial size must be divisible by it.
        num_heads, dropout: see :class:`ChannelAttention`.
        self_proj_dropout: output dropout in self mode (reference: off, quirk Q8).
        unused_token_params: build the reference's never-used ``map_in`` (Q10).

    Raises:
        ValueError: invalid sizes or options; in ``forward``, a spatial size not divisible by the window.

    Example:
        >>> block = LocalComplementarityBlock(channels=8)
        >>> block(torch.randn(2, 8, 2, 4, 4), "self").shape
        torch.Size([2, 8, 2, 4, 4])
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        window_size: Sequence[int] | int = 2,
        num_heads: int = 2,
        dropout: float = 0.1,
        self_proj_dropout: bool = False,
        unused_token_params: bool = True,
    ) -> None:
        super().__init__(spatial_dims, channels, num_heads, dropout, "interleaved", "interleaved", self_proj_dropout)
        self.window_size = _as_tuple(window_size, spatial_dims, "window_size", "LocalComplementarityBlock")
        positions = math.prod(self.window_size)
        self._add_token_learner(positions, self.window_size, unused_token_params)

    def _to_image(self, t: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """``(B, C, prod(window), *grid)`` -> ``(B, C, *spatial)``: sub-position ``o`` of window ``g`` to its voxel."""
        b, c, d = t.shape[0], t.shape[1], self.spatial_dims
        t = t.reshape(b, c, *self.window_size, *grid)
        order = [0, 1] + [i for k in range(d) for i in (2 + d + k, 2 + k)]  # (B, C, g1, w1, g2, w2, ...)
        return t.permute(order).reshape(b, c, *(g * w for g, w in zip(grid, self.window_size)))

    def forward(self, x: torch.Tensor, mode: str = "self", detach_unlabeled: bool = True) -> torch.Tensor:
        """``(B, C, *spatial) -> (B, C, *spatial)``; ``mode``/``detach_unlabeled`` as in :class:`ChannelAttention`."""
        self._check(x)
        spatial = tuple(x.shape[2:])
        if any(s % w for s, w in zip(spatial, self.window_size)):
            raise ValueError(
                f"LocalComplementarityBlock: spatial size {spatial} must be divisible by the window "
                f"{self.window_size} (patch size divisible by 16 × window)."
            )
        b, c = x.shape[:2]
        grid = tuple(s // w for s, w in zip(spatial, self.window_size))
        remix = self.token_learner(x.reshape(b * c, 1, *spatial))  # (BC, prod(window), *grid)
        remix = remix.reshape(b, c, remix.shape[1], -1)  # (B, C, positions, windows)
        tokens = remix.permute(0, 3, 2, 1)  # (B, windows, positions, C)
        attended = self.attn(self.attn_norm(tokens), mode, detach_unlabeled)
        residual = self._to_image(remix, grid)
        summed = self._to_image(attended.permute(0, 3, 2, 1), grid) + residual  # (B, C, *spatial)
        z = self.ffn_norm(summed.movedim(1, -1)).movedim(-1, 1)
        return self.map_out(z)


class SKCModule(nn.Module):
    """The SKC module on the bottleneck: local then global block by default (``SKCDF.py:738-746,758-759``).

    The supplement's architecture ablations (seed 002, Table 5; docs/methods.md#skcdf) are the
    ``blocks`` / ``fusion`` choices: (a) ``["local", "global"]`` sequential (the code, default);
    (d) ``["global", "local"]`` sequential; (e) ``["local", "global"]`` with ``"parallel_sum"``
    (assumed reading of "not blended"); (b)/(c) one block each (assumed). ``blocks=[]`` is the
    identity (the Table 6 baseline without SKC).

    Args:
        channels: ``C`` of the bottleneck (``16·n_filters``).
        spatial_size: bottleneck spatial size (for the global block).
        spatial_dims: 1, 2 or 3.
        blocks: ordered subset of :data:`SKC_BLOCKS`, each at most once.
        fusion: :data:`SKC_FUSIONS`.
        num_heads, dropout: of both attention cores (reference 2, 0.1).
        window_size: local block window (2).
        global_self_head_layout: ``"reference"`` (Q1) or ``"consistent"``.
        local_self_proj_dropout: Q8 (reference False).
        detach_unlabeled: Q5 (reference True).
        unused_token_params: Q10 (reference True).

    Raises:
        ValueError: unknown or repeated blocks, unknown fusion, invalid sizes.

    Example:
        >>> skc = SKCModule(channels=8, spatial_size=(2, 2, 2))
        >>> skc(torch.randn(2, 8, 2, 2, 2), "cross").shape
        torch.Size([2, 8, 2, 2, 2])
    """

    def __init__(
        self,
        channels: int,
        spatial_size: Sequence[int] | int,
        spatial_dims: int = 3,
        blocks: Sequence[str] = ("local", "global"),
        fusion: str = "sequential",
        num_heads: int = 2,
        dropout: float = 0.1,
        window_size: Sequence[int] | int = 2,
        global_self_head_layout: str = "reference",
        local_self_proj_dropout: bool = False,
        detach_unlabeled: bool = True,
        unused_token_params: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(blocks, str) or not isinstance(blocks, Sequence):
            raise ValueError(f"SKCModule: `blocks` must be a list drawn from {SKC_BLOCKS}, got {blocks!r}.")
        names = [look_up(b, SKC_BLOCKS, "blocks", "SKCModule") for b in blocks]
        if len(set(names)) != len(names):
            raise ValueError(f"SKCModule: `blocks` must not repeat a block, got {list(blocks)!r}.")
        self.fusion = look_up(fusion, SKC_FUSIONS, "fusion", "SKCModule")
        self.detach_unlabeled = bool(detach_unlabeled)
        self.block_names = tuple(names)
        made = {
            "local": lambda: LocalComplementarityBlock(
                channels, spatial_dims, window_size, num_heads, dropout, local_self_proj_dropout, unused_token_params
            ),
            "global": lambda: GlobalComplementarityBlock(
                channels, spatial_size, spatial_dims, num_heads, dropout, global_self_head_layout, unused_token_params
            ),
        }
        # keys "<name>_block": a submodule named "global" (a Python keyword) makes a TorchScript file
        # that torch.jit.load cannot parse, so the exported network would not load
        self.blocks = nn.ModuleDict({f"{name}_block": made[name]() for name in names})

    def block(self, name: str) -> nn.Module:
        """The block ``name`` (one of :attr:`block_names`: ``"local"`` / ``"global"``)."""
        if name not in self.block_names:
            raise KeyError(f"SKCModule: no block {name!r}; this module has {list(self.block_names)}.")
        return self.blocks[f"{name}_block"]

    def forward(self, x: torch.Tensor, mode: str = "self") -> torch.Tensor:
        """``(B, C, *spatial) -> (B, C, *spatial)`` in ``mode`` (``"cross"``: batch ``[L; U]``)."""
        if not self.block_names:
            return x
        blocks = list(self.blocks.values())  # in block_names order
        if self.fusion == "parallel_sum":
            return sum(block(x, mode, self.detach_unlabeled) for block in blocks)
        for block in blocks:
            x = block(x, mode, self.detach_unlabeled)
        return x
