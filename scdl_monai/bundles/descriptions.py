"""What the bundles say about each method, dataset and protocol: titles, summaries, references, preprocessing.

Shared by ``configs/metadata.json`` (:mod:`scdl_monai.bundles.metadata`) and ``docs/README.md``
(:mod:`scdl_monai.bundles.readme`) of every generated bundle.
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []


_DHC_REF = (
    "Wang H., Li X. DHC: Dual-debiased Heterogeneous Co-training Framework for Class-imbalanced "
    "Semi-supervised Medical Image Segmentation. MICCAI 2023. https://arxiv.org/abs/2307.11470"
)

_GA_REF = (
    "Qi W., Wu J., Chan S.C. Gradient-Aware for Class-Imbalanced Semi-supervised Medical Image "
    "Segmentation. ECCV 2024, LNCS pp. 473-490. https://eccv.ecva.net/virtual/2024/poster/1540 "
    "(code: https://github.com/cicailalala/GALoss)"
)

_MAGICNET_REF = (
    "Chen D., Bai Y., Shen W., Li Q., Yu L., Wang Y. MagicNet: Semi-Supervised Multi-Organ Segmentation "
    "via Magic-Cube Partition and Recovery. CVPR 2023. https://arxiv.org/abs/2212.14310"
)

_CPS_REF = (
    "Chen X., Yuan Y., Zeng G., Wang J. Semi-Supervised Semantic Segmentation with Cross Pseudo "
    "Supervision. CVPR 2021. https://arxiv.org/abs/2106.01226"
)

_SIMIS_REF = (
    "Chen H., Fan Y., Wang Y., Wang J., Schiele B., Xie X., Savvides M., Raj B. An Embarrassingly Simple "
    "Baseline for Imbalanced Semi-Supervised Learning. arXiv 2022 (v1). https://arxiv.org/abs/2211.11086"
)

_CLD_REF = (
    "Lin Y., Yao H., Li Z., Zheng G., Li X. Calibrating Label Distribution for Class-Imbalanced "
    "Barely-Supervised Knee Segmentation. MICCAI 2022. https://arxiv.org/abs/2205.03644"
)

_VNET_REF = (
    "Milletari F., Navab N., Ahmadi S.-A. V-Net: Fully Convolutional Neural Networks for Volumetric "
    "Medical Image Segmentation. 3DV 2016. https://arxiv.org/abs/1606.04797"
)

#: Per method: title, one-sentence summary (metadata description), references, number of
#: networks in the inference network (2: ``network_b_data_format`` in the metadata).
_METHOD_TEXT: dict[str, dict[str, Any]] = {
    "supervised": {
        "title": "fully supervised",
        "summary": "one network trained on the labeled cases only (the labeled-only baseline; "
        "trained on all labels it is the papers' upper bound)",
        "references": [_VNET_REF],
        "networks": 1,
    },
    "cps": {
        "title": "cross pseudo supervision (CPS)",
        "summary": "two networks of the same architecture, initialised differently (A Kaiming, B Xavier), "
        "each supervised by the labels and by the other's hard pseudo-labels on labeled and unlabeled "
        "patches; the pseudo-label weight ramps up to 0.1 with a sigmoid schedule; inference averages "
        "the two networks' logits",
        "references": [_CPS_REF, _DHC_REF + " (CPS baseline configuration)"],
        "networks": 2,
    },
    "dhc": {
        "title": "dual-debiased heterogeneous co-training (DHC)",
        "summary": "cross pseudo supervision whose two networks are trained with different per-class loss "
        "weights recomputed every iteration: network A with difficulty-aware weights (DiffDW, from its "
        "per-class Dice progress), network B with distribution-aware weights (DistDW, from the class "
        "frequencies of its own pseudo-labels, initialised from the labeled ground truth); inference "
        "averages the two networks' logits",
        "references": [_DHC_REF, _CPS_REF],
        "networks": 2,
    },
    "ga_cps": {
        "title": "GA-CPS (cross pseudo supervision with gradient-aware losses)",
        "summary": "cross pseudo supervision of two VNets trained with the gradient-aware losses: GADice (a "
        "non-vanishing gradient for classes absent from the batch) and GACE (top-k% hardest voxels with "
        "per-class normalisation), per-iteration poly LR over 17,000 iterations; inference averages the "
        "two networks' logits",
        "references": [_GA_REF, _CPS_REF],
        "networks": 2,
    },
    "simis": {
        "title": "SimiS on cross pseudo supervision",
        "summary": "cross pseudo supervision whose two networks weight their losses per class with SimiS "
        "weights C(max P - P) of the class shares P of their own predictions, an EMA (0.99) updated every "
        "iteration and started near uniform from the labeled ground truth; inference averages the two "
        "networks' logits",
        "references": [_SIMIS_REF, _DHC_REF + " (SimiS on CPS, code/train_simis.py)", _CPS_REF],
        "networks": 2,
    },
    "cld": {
        "title": "CLD (calibrating label distribution) on cross pseudo supervision",
        "summary": "cross pseudo supervision with static class weights (max N / N)^(1/3) from the labeled "
        "ground truth and pseudo-label terms restricted to voxels sampled per predicted class, at rates that "
        "grow as the network's confidence in that class on labeled data falls; inference averages the two "
        "networks' logits",
        "references": [_CLD_REF, _DHC_REF + " (CLD on CPS, code/train_cld.py)", _CPS_REF],
        "networks": 2,
    },
    "magicnet": {
        "title": "MagicNet (magic-cube partition and recovery)",
        "summary": "mean-teacher training in which labeled and unlabeled patches are cut into 3x3x3 cubes, "
        "mixed across images and within images (with a cube-location head), decoded and put back, and the "
        "teacher's pseudo-labels are blended with cube-wise predictions for frequent classes; inference "
        "uses the student's VNet",
        "references": [_MAGICNET_REF],
        "networks": 1,
    },
    "ga_magicnet": {
        "title": "GA-MagicNet (MagicNet with gradient-aware losses)",
        "summary": "MagicNet with cross-entropy replaced by GACE and every Dice term by GADice, trained with "
        "the GA reference's literal schedule (poly LR over 70,000 iterations, stopped at 17,000); "
        "inference uses the student's VNet",
        "references": [_GA_REF, _MAGICNET_REF],
        "networks": 1,
    },
    "genericssl": {
        "title": "GenericSSL (aggregating and decoupling, A&D)",
        "summary": "a diffusion-based framework: one shared time-conditioned encoder and three decoders, a "
        "diffusion decoder and a difficulty-weighted decoder whose fused pseudo-labels (DDIM sampling, "
        "Gumbel-softmax, smoothing) teach a third decoder that also receives their parameter EMA; "
        "inference uses the third decoder",
        "references": [
            "Wang H., Li X. Towards Generic Semi-Supervised Framework for Volumetric Medical Image "
            "Segmentation. NeurIPS 2023. https://arxiv.org/abs/2310.11320",
        ],
        "networks": 1,
    },
    "skcdf": {
        "title": "SKCDF (semantic knowledge complementarity based decoupling framework)",
        "summary": "one shared VNet encoder whose bottleneck goes through local and global channel-wise "
        "cross-attention between the labeled and unlabeled halves of the batch, and two decoders: one learns "
        "from the labels, the other from pseudo-labels and from the first one's parameter EMA; each decoder "
        "has a balanced head trained on class-frequency Bernoulli masks; inference uses the second decoder",
        "references": [
            "Zhang Z., Yin G. et al. A Semantic Knowledge Complementarity based Decoupling Framework for "
            "Semi-supervised Class-imbalanced Medical Image Segmentation. CVPR 2025, pp. 25940-25949 "
            "(code: https://github.com/yinguanchun/SKCDF)",
        ],
        "networks": 1,
    },
}

_SCDL_TEXT = {
    "title": "SCDL",
    "summary": "with the SCDL plug-in: each student network carries learnable Gaussian class proxies "
    "aligned bidirectionally with its token embeddings (CDBA) and guided by semantic anchors from the "
    "labeled data (SAC); priors derived from the proxies are injected into every decoder stage, "
    "also at inference",
    "reference": "Su Y., Zhong Y., Zhu K., Zhang Z., Zhang Z., Wang Y., Zhang Y., Liu J. Semantic Class "
    "Distribution Learning for Debiasing Semi-Supervised Medical Image Segmentation. "
    "https://arxiv.org/abs/2603.05202",
}

_DATASET_TEXT = {
    "synapse": {
        "title": "Synapse multi-organ CT (BTCV, MICCAI 2015 Multi-Atlas Abdomen Labeling Challenge)",
        "source": "Synapse project syn3193805 (https://www.synapse.org/#!Synapse:syn3193805), registration "
        "and acceptance of its data use terms required",
        "layout": "RawData/Training/img/img0001.nii.gz, RawData/Training/label/label0001.nii.gz",
        "labeled": "20p",
    },
    "amos": {
        "title": "AMOS 2022 abdominal multi-organ CT/MRI (Ji et al., NeurIPS 2022 Datasets and Benchmarks)",
        "source": "AMOS 2022 challenge release (https://amos22.grand-challenge.org/), under the terms "
        "published by its organisers",
        "layout": "imagesTr/amos_0001.nii.gz, labelsTr/amos_0001.nii.gz, imagesVa/, labelsVa/",
        "labeled": "5p",
    },
}

_PROTOCOL_TEXT = {
    "native": "Native preprocessing protocol (RAS, 1.5x1.5x2 mm, HU window [-125, 275] -> [0, 1], class-balanced patches)",
    "dhc": "DHC preprocessing protocol (whole volume resized to 160x160x80, HU clip [-75, 275], per-volume min-max, random crops)",
    "ga": "GA preprocessing protocol (whole volume resized to 160x160x80, HU window [-125, 275] -> [0, 1], random crops)",
}

_IMAGE_TEXT = {
    "native": "single channel CT in Hounsfield units, reoriented to RAS, resampled to 1.5x1.5x2 mm, windowed to "
    "[-125, 275] and scaled to [0, 1]",
    "dhc": "single channel CT in Hounsfield units, resized to 160x160x80, clipped to [-75, 275], min-max scaled "
    "per volume to [0, 1]",
    "ga": "single channel CT in Hounsfield units, resized to 160x160x80, windowed to [-125, 275] and scaled to [0, 1]",
}

_PREPROCESSING_TEXT = {
    "native": """### Preprocessing ("native" protocol, visible in `configs/train.json`)

`LoadImaged` -> `EnsureChannelFirstd` -> `Orientationd` RAS -> `Spacingd` 1.5x1.5x2 mm (`pixdim`;
bilinear image, nearest label) -> `ScaleIntensityRanged` [-125, 275] HU -> [0, 1] (`a_min`, `a_max`)
-> `SpatialPadd` to the patch -> `ClassesToIndicesd` (cached per case) -> `RandCropByLabelClassesd`
(class-balanced patch centres, `crop_ratios`) for labeled patches, `RandSpatialCropd` for unlabeled ones. Validation/evaluation/inference use the
whole resampled volume with a sliding window of the training patch (uniform weights).
""",
    "dhc": """### Preprocessing ("dhc" protocol, visible in `configs/train.json`)

DHC paper-era protocol: `LoadImaged` -> `EnsureChannelFirstd` -> `Resized` the whole volume to
160x160x80 in HU (x, y, z; `resize_grid`; trilinear image, nearest label) -> HU clip [-75, 275] ->
per-volume min-max to [0, 1] (the reference resizes once offline, `xmed-lab/DHC:code/data/preprocess.py`,
and clips when loading, `code/data/data_loaders.py`) -> random {patch} crops (`patch_size`) with the
reference's pad/offset rule (`scdl_monai.data.transforms.ReferenceRandomCropd`). No reorientation,
no resampling, no flips (the paper-era code's flips had no effect). Validation during training
scores one centre crop per case (`val_crop`); evaluation and inference use the whole grid and
invert the resize.
""",
    "ga": """### Preprocessing ("ga" protocol, visible in `configs/train.json`)

GA protocol: `LoadImaged` -> `EnsureChannelFirstd` -> `Resized` the whole volume in HU to the
160x160x80 grid GA evaluates on (`resize_grid`) -> window [-125, 275] -> [0, 1] (the reference
clips the resized arrays when loading, `cicailalala/GALoss:dataloaders/dataset.py`) -> random {patch}
crops (`patch_size`) with the reference's pad/offset rule (`scdl_monai.data.transforms.ReferenceRandomCropd`:
the 80-deep volume is padded to 102 and lands at a random depth in the patch). Approximation: GA
trained on MagicNet's non-public pre-made volumes. Inference inverts the resize.
""",}
