"""Shared scaffolding of the method tests: two tiny VNets and a random labeled + unlabeled batch."""

import torch

from scdl_monai.networks.vnet import VNet


def two_vnets(num_classes: int, seed: int = 0) -> tuple[VNet, VNet]:
    """Two VNets with 4 filters, drawn one after the other after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return VNet(out_channels=num_classes, n_filters=4), VNet(out_channels=num_classes, n_filters=4)


def random_batch(num_classes: int, seed: int = 0, n_l: int = 1, n_u: int = 1, shape=(16, 16, 16)):
    """``(image_l, label_l, image_u)``: normal images and uniform labels in ``[0, num_classes)``."""
    g = torch.Generator().manual_seed(seed)
    image_l = torch.randn(n_l, 1, *shape, generator=g)
    label_l = torch.randint(0, num_classes, (n_l, 1, *shape), generator=g)
    image_u = torch.randn(n_u, 1, *shape, generator=g)
    return image_l, label_l, image_u


def joint_logits(method, image_l, image_u):
    """(z_A, z_B) of a two-network method on cat(L, U) without gradient: in train mode and without
    dropout these are the logits its training step sees."""
    x = torch.cat([image_l, image_u])
    with torch.no_grad():
        return method.network_a(x), method.network_b(x)


def label_datalist(tmp_path, num_classes: int, shape=(16, 16, 16), n_lab: int = 2):
    """A datalist JSON of ``n_lab`` random NIfTI label maps (class frequencies falling with the index)."""
    import json

    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    p = np.array([2.0**-k for k in range(num_classes)])
    entries = []
    for i in range(n_lab):
        label = rng.choice(num_classes, size=shape, p=p / p.sum()).astype(np.uint8)
        path = tmp_path / f"label_{i}.nii.gz"
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(path))
        entries.append({"label": str(path), "case_id": str(i)})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": entries}))
    return datalist


def tiny_trainer(method, num_classes: int, shape=(16, 16, 16), max_epochs: int = 1, handlers=()):
    """A SemiSupervisedTrainer over random tensors (2 labeled + 2 unlabeled items, batch 1 + 1), one SGD per network."""
    from monai.data import DataLoader, Dataset

    from scdl_monai.engines.trainer import SemiSupervisedTrainer

    g = torch.Generator().manual_seed(7)
    lab = [{"image": torch.randn(1, *shape, generator=g), "label": torch.randint(0, num_classes, (1, *shape), generator=g)}
           for _ in range(2)]  # fmt: skip
    unl = [{"image": torch.randn(1, *shape, generator=g)} for _ in range(2)]
    opts = [torch.optim.SGD(net.parameters(), lr=3e-2, momentum=0.9) for net in method.networks().values()]
    return SemiSupervisedTrainer(
        "cpu", max_epochs, DataLoader(Dataset(lab), batch_size=1), DataLoader(Dataset(unl), batch_size=1), method, opts,
        train_handlers=list(handlers),
    )  # fmt: skip
