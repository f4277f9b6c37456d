"""MagicNet (Chen et al., CVPR'23) and GA-MagicNet (Qi et al., ECCV'24) as one method.

One training step (docs/methods.md#magicnet; ``DeepMed-Lab-ECNU/MagicNet:code/train_main_btcv.py``, GA form
``cicailalala/GALoss:train_Synapse_MagicNet.py``) on the batch ``x = cat(x_L, x_U)`` with the
patch split into a grid of cubes (3×3×3 cubes of 32³ for a 96³ patch):

1. **plain forward** of the student on ``x``; the labeled logits get CE + Dice with the labels;
2. **cross-image partition and recovery**: every grid position draws its own batch permutation,
   the mixed batch goes through the student, its last decoder feature is un-mixed cube by cube
   and the output convolution gives ``outputs_unmix`` aligned with ``x`` (labeled part: Dice with
   the labels; unlabeled part: Dice with the pseudo-label, weight ``w_c``);
3. **teacher** (EMA of the student) on ``x_U + clamp(N(0, 0.1²), ±0.2)`` → logits T, no gradient;
4. **within-image partition**: each sample's G cubes are encoded as a batch; the location head
   classifies every cube's bottleneck into its absolute grid index (27-way NLL, mean over
   samples, weight 0.1); the cubes are decoded, their last features put back at their grid
   positions and the output convolution gives ``outputs_within`` (labeled part: Dice);
5. **cube-wise pseudo-label blending** (after iteration 100): with class weights ``d`` from the
   pseudo-label class counts (recounted every 20 iterations), ``PL = argmax((1 − w)·T + w·U)``,
   ``w_v = d[argmax T_v]`` and ``U`` the within-image logits of the unlabeled samples
   (no gradient); before that, ``PL = argmax T``;
6. ``loss = (CE + Dice + Dice_cross + Dice_within)/4 + 0.1·L_loc + w_c·Dice(outputs_unmix_U, PL)``
   with ``w_c = 0.1·sigmoid_rampup(iteration // 350, 200)``.

After the optimizer step, the teacher is updated by
:class:`~scdl_monai.handlers.ema.EMATeacherUpdate` (``method.update_teacher()``):
``θ_T ← α·θ_T + (1 − α)·θ_S`` with ``α = min(1 − 1/(step + 1), 0.99)``.

GA-MagicNet = ``ga_losses=True``: CE → ``GACELoss(k=10, γ=0.5)``, every Dice (including the
pseudo-label Dice) → ``GADiceLoss``. Its literal schedule (poly LR over 70,000 iterations stopped
at 17,000) lives in the bundle config, not here.

Reference details kept on purpose:

- Default Dice = MagicNet's ``losses.DiceLoss``: batch soft Dice with squared denominators,
  background included, smooth 1e-10, mean over classes — exactly
  ``monai.losses.DiceLoss(include_background=True, to_onehot_y=True, softmax=True,
  squared_pred=True, batch=True, smooth_nr=1e-10, smooth_dr=1e-10)``. CE = plain mean CE.
- The class counter observes the final pseudo-label of every step (the teacher's before the
  blending starts, the blended one after), and is recounted when ``iteration % 20 == 0``,
  including iteration 0; blending is active when ``iteration > 100``.
- Two reference bugs are switches, fixed by default: ``reproduce_index_bug`` (the GA/SCDL copies
  build the cube-wise pseudo-label from the **labeled** samples' cubes) and
  ``reproduce_grid_transpose_bug`` (the reference places within-image cubes transposed across the
  first and last grid axes) — see :func:`scdl_monai.data.cubes.pseudo_label_cube_indices` and
  :func:`scdl_monai.data.cubes.reassemble_cubes`.

Implementation choices (same numbers as the reference for its InstanceNorm VNet, less work):

- All B·G cubes are encoded and decoded in one call (the reference loops over samples); per-cube
  InstanceNorm makes this identical. The location head (BatchNorm1d) is still called per sample
  on that sample's G cubes, as in the reference. The reference shuffles the G cubes before the
  head; this changes neither the mean NLL nor the BatchNorm1d batch statistics, so it is omitted.
- ``U`` of the blending reuses the within-image cube logits already computed (the reference
  decodes the same cube features a second time under ``no_grad``; identical without dropout).
- The teacher starts as a copy of the student's backbone (the reference draws an independent
  network; ``α(0) = 0`` makes the teacher equal to the student after the first update anyway). It
  is the backbone only: the teacher's location head would never be used. It runs in the method's
  train/eval mode (the reference keeps it in train mode; InstanceNorm and no dropout make the two
  modes identical).

Single-model inference: :meth:`MagicNet.inference_network` is the student's VNet.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from scdl_monai.data.cubes import (
    cross_image_partition,
    cross_image_permutations,
    cross_image_recovery,
    location_labels,
    partition_within_image,
    pseudo_label_cube_indices,
    reassemble_cubes,
)
from scdl_monai.weighting.frequency import ClassFrequencyTracker, blend_pseudo_logits
from scdl_monai.data.utils import check_number
from scdl_monai.networks.weight_ema import ema_update
from scdl_monai.losses.ga import GACELoss, GADiceLoss
from scdl_monai.losses.segmentation import WeightedCELoss
from scdl_monai.methods.base import MethodOutput, SemiSupervisedMethod
from scdl_monai.networks.magicnet import MagicNetwork

__all__ = ["MagicNet", "magicnet_dice_loss", "ema_momentum"]

# Constants: DeepMed-Lab-ECNU/MagicNet:code/train_main_btcv.py (argparse defaults and loop body).
_EMA_DECAY = 0.99  # --ema_decay
_LOC_WEIGHT = 0.1  # loss = supervised + 0.1 * loc_loss + ...
_CONSISTENCY = 0.1  # --consistency
_RAMPUP = 200.0  # --consistency_rampup
_RAMPUP_INTERVAL = 350  # get_current_consistency_weight(iter_num // 350)
_BLEND_AFTER = 100  # if iter_num > 100: blend
_RECOUNT = 20  # if iter_num % 20 == 0: update_class_dist()
_T_DIST = 1.0  # --T_dist
_NOISE_STD, _NOISE_CLIP = 0.1, 0.2  # clamp(randn * 0.1, -0.2, 0.2)
_GA_K, _GA_GAMMA = 10, 0.5  # cicailalala/GALoss:train_Synapse_MagicNet.py GACE(k=10, gama=0.5)
_DICE_SMOOTH = 1e-10  # MagicNet code/utils/losses.py DiceLoss._dice_loss


def magicnet_dice_loss() -> DiceLoss:
    """MagicNet's Dice (``code/utils/losses.py``) as a MONAI ``DiceLoss``.

    ``mean_c [1 − (2Σ p_c t_c + 1e-10) / (Σ p_c² + Σ t_c² + 1e-10)]`` with sums over the batch and
    all voxels, background included, on softmax probabilities and a (B, 1, *spatial) label.
    """
    return DiceLoss(
        include_background=True,
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        batch=True,
        smooth_nr=_DICE_SMOOTH,
        smooth_dr=_DICE_SMOOTH,
    )


def ema_momentum(step: int, decay: float = _EMA_DECAY) -> float:
    """Warm-up EMA momentum ``α = min(1 − 1/(step + 1), decay)`` (UA-MT ``update_ema_variables``).

    ``step`` is the 0-based index of the optimizer step just taken: α(0) = 0 (the teacher becomes
    the student), α(1) = 0.5, …, capped at ``decay`` from step 99 on for decay 0.99.

    Raises:
        ValueError: negative ``step`` or ``decay`` outside [0, 1].
    """
    check_number(step, "step", "ema_momentum", integer=True)
    if not 0.0 <= float(decay) <= 1.0:
        raise ValueError(f"ema_momentum: `decay` must lie in [0, 1], got {decay!r}.")
    return min(1.0 - 1.0 / (step + 1), float(decay))


class MagicNet(SemiSupervisedMethod):
    """MagicNet / GA-MagicNet training step (see the module docstring for the algorithm).

    Args:
        student: a :class:`~scdl_monai.networks.magicnet.MagicNetwork` (VNet + location head).
        num_classes: C (must equal the backbone's ``out_channels``).
        ga_losses: GA-MagicNet losses (GACE k=10 γ=0.5 for CE, GADice for every Dice).
        reproduce_index_bug: build the cube-wise pseudo-label from the labeled samples' cubes,
            as the GALoss/SCDL copies (published GA/SCDL MagicNet numbers); default: fixed.
        reproduce_grid_transpose_bug: place within-image cubes like the reference
            ``unmix_tensor`` (transposed across the first and last grid axes); default: fixed.
        ema_decay: cap of the teacher momentum (0.99).
        location_weight: weight of the location loss (0.1).
        consistency: ``w_max`` of the pseudo-label Dice weight, set every step as
            ``consistency·sigmoid_rampup(iteration // rampup_interval, consistency_rampup)``
            into the ``unsup_weight`` buffer (0.1). ``None``: use ``unsup_weight`` as set from
            outside (e.g. by :class:`~scdl_monai.handlers.schedules.UnsupWeightSchedule`).
        consistency_rampup: ramp length in units of ``rampup_interval`` iterations (200).
        rampup_interval: iterations per ramp-up step (350).
        blend_after: blending is active when ``iteration > blend_after`` (100).
        recount_interval: class counts are refreshed when ``iteration % recount_interval == 0`` (20).
        temperature: ``T_dist`` of the class-frequency weights (1.0).
        noise_std, noise_clip: teacher input noise ``clamp(N(0, std²), ±clip)`` (0.1, 0.2).
        ce_loss, dice_loss: override the CE / Dice losses (project loss contract); default chosen
            by ``ga_losses``.

    Buffers (in ``state_dict``, so resume is exact): ``iteration`` (completed training steps),
    ``unsup_weight``, the class counter's ``pending``/``counts``; the teacher's parameters.

    Raises:
        TypeError: ``student`` is not a MagicNetwork; bad flag types.
        ValueError: ``num_classes`` not matching the student; negative weights/intervals.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> student = MagicNetwork(VNet(out_channels=3, n_filters=4, norm="batch"), cube_size=16,
        ...                        patch_size=48, hidden_features=32)
        >>> method = MagicNet(student, num_classes=3)
        >>> x = torch.randn(2, 1, 48, 48, 48)
        >>> out = method(x, torch.randint(0, 3, (2, 1, 48, 48, 48)), torch.randn(2, 1, 48, 48, 48))  # doctest: +SKIP
    """

    network_names = ("student",)

    iteration: torch.Tensor

    def __init__(
        self,
        student: MagicNetwork,
        num_classes: int,
        ga_losses: bool = False,
        reproduce_index_bug: bool = False,
        reproduce_grid_transpose_bug: bool = False,
        ema_decay: float = _EMA_DECAY,
        location_weight: float = _LOC_WEIGHT,
        consistency: float | None = _CONSISTENCY,
        consistency_rampup: float = _RAMPUP,
        rampup_interval: int = _RAMPUP_INTERVAL,
        blend_after: int = _BLEND_AFTER,
        recount_interval: int = _RECOUNT,
        temperature: float = _T_DIST,
        noise_std: float = _NOISE_STD,
        noise_clip: float = _NOISE_CLIP,
        ce_loss: nn.Module | None = None,
        dice_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(student, MagicNetwork):
            raise TypeError(f"MagicNet: `student` must be a MagicNetwork, got {type(student).__name__}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes != student.out_channels:
            raise ValueError(
                f"MagicNet: `num_classes` must equal the student's out_channels={student.out_channels}, "
                f"got {num_classes!r}."
            )
        for key, flag in (
            ("ga_losses", ga_losses),
            ("reproduce_index_bug", reproduce_index_bug),
            ("reproduce_grid_transpose_bug", reproduce_grid_transpose_bug),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"MagicNet: `{key}` must be a bool, got {flag!r}.")
        if not 0.0 <= float(ema_decay) <= 1.0:
            raise ValueError(f"MagicNet: `ema_decay` must lie in [0, 1], got {ema_decay!r}.")
        if check_number(rampup_interval, "rampup_interval", "MagicNet", integer=True) == 0:
            raise ValueError("MagicNet: `rampup_interval` must be >= 1, got 0.")
        if check_number(recount_interval, "recount_interval", "MagicNet", integer=True) == 0:
            raise ValueError("MagicNet: `recount_interval` must be >= 1, got 0.")

        self.student = student
        self.teacher = copy.deepcopy(student.backbone).requires_grad_(False)
        self.num_classes = num_classes
        self.ga_losses = ga_losses
        self.reproduce_index_bug = reproduce_index_bug
        self.reproduce_grid_transpose_bug = reproduce_grid_transpose_bug
        self.ema_decay = float(ema_decay)
        self.location_weight = check_number(location_weight, "location_weight", "MagicNet")
        self.consistency = None if consistency is None else check_number(consistency, "consistency", "MagicNet")
        self.consistency_rampup = check_number(consistency_rampup, "consistency_rampup", "MagicNet")
        self.rampup_interval = rampup_interval
        self.blend_after = check_number(blend_after, "blend_after", "MagicNet", integer=True)
        self.recount_interval = recount_interval
        self.noise_std = check_number(noise_std, "noise_std", "MagicNet")
        self.noise_clip = check_number(noise_clip, "noise_clip", "MagicNet")
        if ce_loss is None:
            ce_loss = GACELoss(k=_GA_K, gamma=_GA_GAMMA) if ga_losses else WeightedCELoss()
        if dice_loss is None:
            dice_loss = GADiceLoss() if ga_losses else magicnet_dice_loss()
        self.ce_loss = ce_loss
        self.dice_loss = dice_loss
        self.class_tracker = ClassFrequencyTracker(num_classes, temperature)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"ga_losses={self.ga_losses}, reproduce_index_bug={self.reproduce_index_bug}, "
            f"reproduce_grid_transpose_bug={self.reproduce_grid_transpose_bug}"
        )

    # ------------------------------------------------------------------ schedules / teacher
    def consistency_weight(self, iteration: int) -> float:
        """``consistency·exp(−5(1 − clip(iteration // interval, 0, R)/R)²)`` (R = ``consistency_rampup``).

        The sigmoid ramp-up of docs/methods.md#shared-losses-and-schedules evaluated at ``iteration // rampup_interval``
        (``ramps.sigmoid_rampup`` of the reference; R = 0 gives the full weight).
        """
        if self.consistency is None:
            return float(self.unsup_weight)
        if self.consistency_rampup == 0:
            return self.consistency
        phase = 1.0 - min(float(iteration // self.rampup_interval), self.consistency_rampup) / self.consistency_rampup
        return self.consistency * math.exp(-5.0 * phase * phase)

    @torch.no_grad()
    def update_teacher(self, step: int | None = None) -> float:
        """EMA update of the teacher from the student's backbone after an optimizer step.

        Args:
            step: 0-based index of the optimizer step just taken; default ``iteration − 1`` (the
                step that :meth:`train_step` just counted).

        Returns:
            The momentum α used (:func:`ema_momentum`).
        """
        if step is None:
            step = max(int(self.iteration) - 1, 0)
        alpha = ema_momentum(step, self.ema_decay)
        ema_update(self.teacher, self.student.backbone, momentum=alpha)
        return alpha

    def wrap_ddp(self, **ddp_kwargs: Any) -> SemiSupervisedMethod:
        """Not supported: the step calls the student's hooks (encode/decode/locate), which a
        ``DistributedDataParallel`` wrapper would bypass, so gradients would not be synchronised."""
        raise NotImplementedError("MagicNet: DDP training is not supported (the cube passes bypass DDP's forward).")

    def inference_network(self) -> nn.Module:
        """Single-model inference: the student's VNet (logits); the teacher is not used."""
        return self.student.backbone

    # ------------------------------------------------------------------ training
    def _grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        spatial = tuple(x.shape[2:])
        cubes = self.student.cube_size
        if len(spatial) != 3 or any(s % c for s, c in zip(spatial, cubes)):
            raise ValueError(f"MagicNet: patch size {spatial} must be a multiple of the cube size {cubes}.")
        grid = tuple(s // c for s, c in zip(spatial, cubes))
        if grid[0] * grid[1] * grid[2] != self.student.num_locations:
            raise ValueError(
                f"MagicNet: patch size {spatial} gives a {grid} cube grid, but the location head predicts "
                f"{self.student.num_locations} locations (grid {self.student.grid}, patch {self.student.patch_size})."
            )
        return grid  # type: ignore[return-value]

    @torch.no_grad()
    def pseudo_label(
        self, teacher_logits: torch.Tensor, within_logits: torch.Tensor, labeled_bs: int, step: int
    ) -> tuple[torch.Tensor, bool]:
        """Pseudo-label of the unlabeled samples at step ``step``; updates the class counter.

        ``step <= blend_after``: ``argmax T``. Later: ``argmax blend_pseudo_logits(T, U, d)`` with
        ``U = within_logits[pseudo_label_cube_indices(B, labeled_bs, reproduce_index_bug)]`` and
        ``d`` the class-frequency weights of the current counts. The result is then counted, and
        the counts are refreshed when ``step % recount_interval == 0``.

        Args:
            teacher_logits: (B_u, C, *patch) teacher logits on the unlabeled images.
            within_logits: (B, C, *patch) within-image (cube-wise) logits of the whole batch.
            labeled_bs: B_l (the batch is ``[labeled | unlabeled]``).
            step: 0-based training step.

        Returns:
            ``(pseudo_label (B_u, 1, *patch) int64, blend_active)``.
        """
        blend_active = step > self.blend_after
        if blend_active:
            index = pseudo_label_cube_indices(within_logits.shape[0], labeled_bs, self.reproduce_index_bug)
            weights = self.class_tracker.weights().to(teacher_logits.device)
            blended = blend_pseudo_logits(teacher_logits.float(), within_logits[index].detach().float(), weights)
            pseudo_label = blended.argmax(dim=1, keepdim=True)
        else:
            pseudo_label = teacher_logits.argmax(dim=1, keepdim=True)
        self.class_tracker.observe(pseudo_label)
        if step % self.recount_interval == 0:
            self.class_tracker.refresh()
        return pseudo_label, blend_active

    def location_loss(self, bottleneck: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over samples of the G-way NLL of the location head on each sample's cubes.

        Args:
            bottleneck: (B, G, C5, *cube/16) bottleneck features of every sample's cubes.
            labels: (G,) absolute location labels of the cubes.
        """
        losses = [F.cross_entropy(self.student.locate(sample).float(), labels) for sample in bottleneck]
        return torch.stack(losses).mean()

    def forward(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None = None
    ) -> MethodOutput:
        """One MagicNet training step (same as :meth:`train_step` without an engine)."""
        return self.train_step(None, image_l, label_l, image_u)

    def train_step(
        self, engine: Any, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None
    ) -> MethodOutput:
        """Compute the MagicNet loss for one batch and advance the step counter.

        Args:
            engine: the calling engine (unused: the step index is the ``iteration`` buffer).
            image_l: (B_l, 1, *patch); label_l: (B_l, 1, *patch) integer; image_u: (B_u, 1, *patch).

        Returns:
            MethodOutput with the total loss, the plain student logits on the labeled images as
            ``pred`` and the named terms ``loss_ce``, ``loss_dice``, ``loss_dice_cross``,
            ``loss_dice_within``, ``loss_sup``, ``loss_loc``, ``loss_consistency``,
            ``unsup_weight``, ``blend_active``.

        Raises:
            ValueError: no unlabeled batch, or a patch that does not match the cube grid.
        """
        self.check_batches(image_l, label_l, image_u)
        if image_u is None:
            raise ValueError("MagicNet: an unlabeled batch `image_u` is required (the teacher pseudo-labels it).")
        step = int(self.iteration)
        n_l = image_l.shape[0]
        x = torch.cat([image_l, image_u], dim=0)
        batch_size = x.shape[0]
        grid = self._grid(x)
        num_cubes = grid[0] * grid[1] * grid[2]
        student = self.student

        # 1. plain forward (the reference forwards the whole batch, only the labeled part is used)
        logits = student(x)

        # 2. cross-image partition -> student -> recovery of the last feature -> output conv
        permutations = cross_image_permutations(batch_size, grid, device=x.device)
        _, feature_mixed = student.features(cross_image_partition(x, permutations))
        logits_cross = student.head(cross_image_recovery(feature_mixed, permutations))

        # 3. teacher on the noisy unlabeled images
        with torch.no_grad():
            noise = torch.clamp(torch.randn_like(image_u) * self.noise_std, -self.noise_clip, self.noise_clip)
            teacher_logits = self.teacher(image_u + noise)

        # 4. within-image partition: location loss on the cube bottlenecks, local recovery
        cubes = partition_within_image(x, grid)  # (B, G, 1, s0, s1, s2)
        cube_features = student.encode(cubes.flatten(0, 1))
        bottleneck = cube_features[-1].unflatten(0, (batch_size, num_cubes))
        loss_loc = self.location_loss(bottleneck, location_labels(grid, device=x.device))
        _, cube_last = student.decode(cube_features)
        within_feature = reassemble_cubes(
            cube_last.unflatten(0, (batch_size, num_cubes)), grid, self.reproduce_grid_transpose_bug
        )
        logits_within = student.head(within_feature)

        # 5. pseudo-label: teacher argmax, blended with the cube-wise logits after `blend_after`
        pseudo_label, blend_active = self.pseudo_label(teacher_logits, logits_within, n_l, step)

        # 6. losses
        # float32 losses: the sums run over every voxel of the batch (too coarse in half precision)
        loss_ce = self.ce_loss(logits[:n_l].float(), label_l)
        loss_dice = self.dice_loss(logits[:n_l].float(), label_l)
        loss_dice_cross = self.dice_loss(logits_cross[:n_l].float(), label_l)
        loss_dice_within = self.dice_loss(logits_within[:n_l].float(), label_l)
        loss_sup = (loss_ce + loss_dice + loss_dice_cross + loss_dice_within) / 4
        loss_consistency = self.dice_loss(logits_cross[n_l:].float(), pseudo_label)
        if self.consistency is not None:
            self.set_unsup_weight(self.consistency_weight(step))
        weight = self.unsup_weight.detach().clone()  # a later set_unsup_weight must not touch this graph
        loss = loss_sup + self.location_weight * loss_loc + weight * loss_consistency

        self.iteration.add_(1)
        terms = {
            "loss_ce": loss_ce.detach(),
            "loss_dice": loss_dice.detach(),
            "loss_dice_cross": loss_dice_cross.detach(),
            "loss_dice_within": loss_dice_within.detach(),
            "loss_sup": loss_sup.detach(),
            "loss_loc": loss_loc.detach(),
            "loss_consistency": loss_consistency.detach(),
            "unsup_weight": weight,
            "blend_active": torch.tensor(float(blend_active), device=x.device),
        }
        return MethodOutput(loss=loss, pred=logits[:n_l].detach(), terms=terms)
