"""The alternative preprocessing protocols ("dhc", "ga", docs/data.md) as bundle overlays.

A CPS bundle written with ``--protocol dhc|ga`` trains one epoch, and its inference config undoes
the whole-volume resize: the label map has the input's shape and affine (tiny grid and patch).
"""

import json

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

from scdl_monai.bundles import write_bundle
from scdl_monai.data.phantom import generate_phantom

TINY = {
    "resize_grid": [32, 32, 16],
    "patch_size": [32, 32, 16],
    "n_filters": 4,
    "num_workers": 0,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    return generate_phantom(root, num_cases=5, shape=(40, 36, 24), seed=4, labeled_fraction=0.5, num_validation=1, num_test=1)


@pytest.mark.parametrize("protocol", ["dhc", "ga"])
def test_protocol_bundle_trains_and_inverts_the_resize(protocol, datalist, tmp_path):
    bundle = write_bundle("cps", "synapse", tmp_path / f"cps_synapse_{protocol}", protocol=protocol)
    common = {"bundle_root": str(bundle), "logging_file": False, **TINY}
    train = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"), workflow_type="train", datalist=str(datalist),
        cache_rate=0.0, batch_size=1, unlabeled_batch_size=1, val_interval=1, **{"train#trainer#max_epochs": 1}, **common,
    )  # fmt: skip
    train.initialize()
    assert train.check_properties() == []
    assert train.parser.get_parsed_content("protocol") == protocol
    train.run()
    train.finalize()
    assert (bundle / "models" / "model.pt").is_file()

    image = json.loads(datalist.read_text())["test"][0]["image"]
    infer = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"), workflow_type="inference", input_files=[image],
        output_dir=str(tmp_path / "out"), progress=False, **common,
    )  # fmt: skip
    infer.initialize()
    infer.run()
    infer.finalize()
    (pred,) = list((tmp_path / "out").glob("*_seg.nii.gz"))
    ref = nib.load(image)
    out = nib.load(str(pred))
    assert out.shape == ref.shape == (40, 36, 24)
    assert np.allclose(out.affine, ref.affine)
