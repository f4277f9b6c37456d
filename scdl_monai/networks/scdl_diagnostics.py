"""What the SCDL branch of a trained network has learned: token assignments, proxies, prior strength.

SCDL (Su et al., arXiv 2603.05202 §2.1) assigns every token to a class through the cosine to the
class proxy means, ``P(c|t) = softmax_c(cos(ẑ_t, μ̂_c)/τ)``, and feeds priors built from these
assignments into the decoder. Whether that branch carries class information is not visible in the
segmentation Dice: a network can segment well while its proxies stay where they were initialised.
:func:`probe_scdl_network` measures it directly on labeled patches:

* ``token_accuracy``: the share of tokens whose assigned class (argmax ``P(c|t)``) is the majority
  class of the token's cell in the ground truth; ``majority_baseline`` is what assigning every
  token to the most frequent class would score, so a branch that learned nothing scores at or below
  it;
* ``class_recall``: per class, the share of the tokens whose majority class it is that are assigned
  to it (``nan`` for classes that are no token's majority);
* ``assigned_histogram``: how many tokens each class receives;
* the proxies: mean ``‖μ_c‖``, mean ``σ`` (``softplus`` of its raw parameter; the released
  Xavier-uniform initialisation starts at ``softplus(0) ≈ 0.693``), the largest cosine between two
  class means;
* ``prior_to_feature``: ``‖projected prior‖ / ‖feature it is added to‖`` per injection target
  (``all_stages``: each decoder stage's skip feature, coarsest first; ``bottleneck``: the
  bottleneck feature; empty for ``head`` and ``none``): how strongly the prior drives the decoder.

Everything runs without gradients in eval mode (the deterministic prior of inference) and restores
the network's mode afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from scdl_monai.networks.class_distribution import token_weights_from_labels
from scdl_monai.networks.prior_injection import SCDLNetwork

__all__ = ["find_scdl_networks", "probe_scdl_network"]


def find_scdl_networks(module: nn.Module) -> list[tuple[str, SCDLNetwork]]:
    """``(name, network)`` of every :class:`SCDLNetwork` inside ``module`` (itself included), in order.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> net = SCDLNetwork(VNet(out_channels=3, n_filters=4), num_classes=3, scdl_kwargs={"z_dim": 16})
        >>> [name for name, _ in find_scdl_networks(nn.ModuleList([net]))]
        ['0']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"find_scdl_networks: expected an nn.Module, got {type(module).__name__}.")
    return [(name, m) for name, m in module.named_modules() if isinstance(m, SCDLNetwork)]


def _proxy_summary(network: SCDLNetwork) -> dict:
    mu, sigma = network.scdl.proxy_parameters()
    mu_hat = F.normalize(mu.detach().float(), dim=-1)
    cos = mu_hat @ mu_hat.t()
    cos.fill_diagonal_(-math.inf)
    return {
        "mu_norm_mean": float(mu.detach().float().norm(dim=-1).mean()),
        "sigma_mean": float(sigma.detach().float().mean()),
        "max_proxy_cosine": float(cos.max()) if cos.shape[0] > 1 else math.nan,
    }


def _injection_targets(network: SCDLNetwork, features: list) -> list:
    """The features the prior is added to, before decoding: decoder stages or the bottleneck."""
    if network.injection == "all_stages":
        return list(features[-2::-1])  # the skip features x4, x3, x2, x1 the stages add it to
    if network.injection == "bottleneck":
        return [features[-1]]
    return []  # "head" (after decoding) and "none"


@torch.no_grad()
def probe_scdl_network(network: SCDLNetwork, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Token-assignment quality and prior strength of ``network`` on labeled patches.

    Args:
        network: a trained :class:`SCDLNetwork` (encoder token source, any injection target).
        batches: ``(image (B, in_channels, *patch), label (B, 1, *patch))`` pairs, patches the
            backbone accepts (``network.is_valid_shape``), labels of class indices.

    Returns:
        A dict (JSON-ready floats and lists) with the keys described in the module docstring,
        plus ``tokens`` (how many were scored).

    Raises:
        TypeError: ``network`` is not an :class:`SCDLNetwork`.
        ValueError: a decoder-final token source (its tokens need a full decoding), no batches, or
            an image/label pair of different spatial shapes.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> net = SCDLNetwork(VNet(out_channels=3, n_filters=4), num_classes=3, scdl_kwargs={"z_dim": 16})
        >>> lab = torch.zeros(1, 1, 32, 32, 32, dtype=torch.long); lab[..., :16, :, :] = 1
        >>> report = probe_scdl_network(net, [(torch.rand(1, 1, 32, 32, 32), lab)])
        >>> report["tokens"], report["majority_baseline"]
        (64, 0.5)
    """
    if not isinstance(network, SCDLNetwork):
        raise TypeError(f"probe_scdl_network: expected an SCDLNetwork, got {type(network).__name__}.")
    if network.token_source != "encoder":
        raise ValueError(
            "probe_scdl_network: only token_source='encoder' is supported (decoder-final tokens exist only "
            "after a full decoding)."
        )
    num_classes = network.num_classes
    correct, total = 0, 0
    majority_counts = torch.zeros(num_classes, dtype=torch.float64)
    hits = torch.zeros(num_classes, dtype=torch.float64)
    assigned = torch.zeros(num_classes, dtype=torch.float64)
    ratios: list[list[float]] = []
    was_training = network.training
    network.eval()
    try:
        for image, label in batches:
            if tuple(image.shape[2:]) != tuple(label.shape[2:]):
                raise ValueError(
                    f"probe_scdl_network: image {tuple(image.shape)} and label {tuple(label.shape)} differ in "
                    "spatial shape."
                )
            features = network.encode(image)
            out = network.scdl(network.token_extractor(features[network.token_stage]), stochastic=False)
            grid = tuple(out.prior.shape[2:])
            pred = out.probs.argmax(dim=-1).flatten().cpu()
            cell = token_weights_from_labels(label, num_classes, grid).argmax(dim=-1).flatten().cpu()
            correct += int((pred == cell).sum())
            total += int(pred.numel())
            majority_counts += torch.bincount(cell, minlength=num_classes).double()
            hits += torch.bincount(cell[pred == cell], minlength=num_classes).double()
            assigned += torch.bincount(pred, minlength=num_classes).double()
            targets = _injection_targets(network, features)
            if targets:
                stages = network.scdl.project_prior(out.prior, targets)
                ratios.append([float(p.norm() / f.norm().clamp_min(1e-12)) for p, f in zip(stages, targets)])
    finally:
        network.train(was_training)
    if not total:
        raise ValueError("probe_scdl_network: no batches were given.")
    recall = torch.where(majority_counts > 0, hits / majority_counts.clamp_min(1), torch.full_like(hits, math.nan))
    return {
        "tokens": total,
        "token_accuracy": correct / total,
        "majority_baseline": float(majority_counts.max()) / total,
        "class_recall": [round(float(r), 4) for r in recall],
        "assigned_histogram": [int(a) for a in assigned],
        **_proxy_summary(network),
        "prior_to_feature": [round(sum(col) / len(col), 4) for col in zip(*ratios)] if ratios else [],
    }
