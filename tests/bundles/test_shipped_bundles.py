"""The shipped bundles (``scdl_monai.bundles.SHIPPED``: every method on Synapse and AMOS), each
without and, for the semi-supervised ones (SKCDF excepted), with ``configs/scdl.json`` (``VARIANTS``).

* Every variant (comparators: see ``LEAN``), without training: MONAI's ``verify_metadata`` (vendored schema),
  ``check_properties() == []`` for ``train.json`` and ``inference.json`` (each + ``scdl.json``
  for the SCDL variant), ``verify_net_in_out`` for ``network_def`` and the exported network, and
  ``ckpt_export`` (TorchScript by tracing) of the exported network at a tiny size, compared with
  the eager network.
* Every semi-supervised bundle x {baseline, SCDL} (and the supervised one) trains, evaluates and
  infers end to end at smoke size (here, or in its per-method test: ``COVERED_ELSEWHERE``), in a
  temporary copy of the bundle on synthetic NIfTI data; the
  evaluate overlay and the inference config must agree voxel for voxel. Two of them also run
  ``inference.json`` on the exported TorchScript file instead of the checkpoint.
"""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from scdl_monai.bundles import METHOD_PROTOCOLS, VARIANTS, bundle_name, export_network_id, schema_path
from scdl_monai.data.phantom import generate_phantom
from scdl_monai.engines.policy_inferer import PolicyInferer
from scdl_monai.engines.precision import cpu_bf16_support

from ..conftest import REPO_ROOT
from .conftest import tiny

#: Variants whose train / evaluate / inference run is a per-method test already (with its own checks).
COVERED_ELSEWHERE = {
    ("dhc", "synapse", False): "test_dhc_bundle.py",
    ("ga_cps", "synapse", False): "test_ga_cps_bundle.py",
    ("magicnet", "synapse", False): "test_magicnet_bundle.py",
    ("genericssl", "synapse", False): "test_genericssl_bundle.py",
    ("cps", "synapse", True): "test_scdl_bundle.py",
    ("skcdf", "synapse", False): "test_skcdf_bundle.py",
}
#: Comparator bundles run only where a run checks something new (CI budget: ~10 s a run). An AMOS
#: bundle differs from its Synapse twin by the dataset overlay alone (classes, folder), which the
#: AMOS runs of the other methods cover; SimiS and CLD are CPS variants, so their baseline is
#: verified and exported (check_properties, network I/O, TorchScript) and their SCDL variant trains,
#: evaluates and infers (reading train.json, evaluate.json and inference.json as well); SKCDF
#: (Synapse) is verified here and trained in test_skcdf_bundle.py.
LEAN = ("simis", "cld", "skcdf")
#: (method, dataset, scdl) verified and exported without training.
VERIFIED = tuple(c for c in VARIANTS if c[0] not in LEAN) + tuple((m, "synapse", False) for m in LEAN)
#: (method, dataset, scdl) trained, evaluated and inferred here: with COVERED_ELSEWHERE, every
#: semi-supervised bundle with and without SCDL (comparators: see LEAN), and the supervised baseline on Synapse.
SMOKE = (
    (("supervised", "synapse", False),)
    + tuple(c for c in VARIANTS if c[0] not in ("supervised", *LEAN) and c not in COVERED_ELSEWHERE)
    + (("simis", "synapse", True), ("cld", "synapse", True))
)
#: variants whose exported TorchScript also runs through inference.json (baseline and SCDL)
TORCHSCRIPT_RUNS = (("supervised", "synapse", False), ("cps", "amos", True))
TWO_NETWORKS = ("cps", "dhc", "ga_cps", "simis", "cld")


def _id(case):
    method, dataset, scdl = case
    return bundle_name(method, dataset) + ("+scdl" if scdl else "")


def _network_overrides(method, scdl):
    """Tiny network size for the inference config (what verify_net_in_out / ckpt_export build)."""
    return {k: v for k, v in tiny(method, scdl, kind="inference").items() if k not in ("amp", "progress", "num_workers")}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """7 phantom cases of 32^3 (Synapse ids, valid for AMOS's 16 classes too): 2 labeled, 2 unlabeled, 2 val, 1 test."""
    root = tmp_path_factory.mktemp("phantom")
    return generate_phantom(root, num_cases=7, shape=(32, 32, 32), seed=0, labeled_fraction=0.5, num_validation=2, num_test=1)


def _workflow(bundle, configs, workflow_type, scdl=False, **overrides):
    files = [str(bundle / "configs" / f"{c}.json") for c in [*configs, *(["scdl"] if scdl else [])]]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        **{"bundle_root": str(bundle), **overrides},
    )


def _export(bundle, net_id, ckpt, out, small, shape, scdl=False):
    meta = str(bundle / "configs" / "metadata.json")
    config = [str(bundle / "configs" / f) for f in ["inference.json", *(["scdl.json"] if scdl else [])]]
    # check_trace=False: torch.jit.trace's own re-run and comparison; the callers compare with the eager network
    ckpt_export(net_id=net_id, filepath=str(out), ckpt_file=str(ckpt), meta_file=meta, config_file=config,
                use_trace=True, input_shape=[1, 1, *shape], converter_kwargs={"check_trace": False}, **small)  # fmt: skip
    return torch.jit.load(str(out))


def _network(bundle, net_id, small, scdl=False):
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f) for f in ["inference.json", *(["scdl.json"] if scdl else [])]])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update(small)
    return parser.get_parsed_content(net_id).eval()


@pytest.mark.parametrize("method,dataset,scdl", VERIFIED, ids=[_id(c) for c in VERIFIED])
def test_shipped_bundle_verifies_and_exports(method, dataset, scdl, phantom, tmp_path):
    bundle = REPO_ROOT / "bundles" / bundle_name(method, dataset)
    meta_file = bundle / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(schema_path()))
    meta = json.loads(meta_file.read_text())
    num_classes = 14 if dataset == "synapse" else 16
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == num_classes
    assert ("network_b_data_format" in meta) == (method in TWO_NETWORKS)
    # check_properties() instantiates every property (trainer, datasets, evaluator...): tiny sizes
    settings = {
        "train": {**tiny(method, scdl), "datalist": str(phantom), "device": "cpu"},
        "inference": {**tiny(method, scdl, kind="inference"), "input_files": [], "device": "cpu"},
    }
    for config, workflow_type in (("train", "train"), ("inference", "inference")):
        wf = _workflow(bundle, [config], workflow_type, scdl, bundle_root=str(tmp_path), **settings[config])
        wf.initialize()
        assert wf.check_properties() == [], config
        assert wf.parser.get_parsed_content("protocol") == METHOD_PROTOCOLS[method]
        assert ("scdl_block" in wf.parser.config) == scdl

    small = _network_overrides(method, scdl)
    export_id = export_network_id(scdl)
    configs = [str(bundle / "configs" / f) for f in ["inference.json", *(["scdl.json"] if scdl else [])]]
    for net_id in ("network_def", export_id):
        verify_net_in_out(net_id=net_id, meta_file=str(meta_file), config_file=configs, n=2, device="cpu", **small)
    net = _network(bundle, export_id, small, scdl)
    assert any(k.startswith("scdl.") or ".scdl." in k for k in net.state_dict()) == scdl  # the SCDL blocks are exported
    torch.save(net.state_dict(), tmp_path / "model.pt")
    scripted = _export(bundle, export_id, tmp_path / "model.pt", tmp_path / "model.ts", small, (32, 32, 32), scdl)
    # SKCDF's global SKC block is built for `patch_size`: the network takes only that size (one sliding window)
    shapes = ((32, 32, 32),) if method == "skcdf" else ((32, 32, 32), (48, 32, 16))
    with torch.no_grad():
        # same values as the eager network, also at a shape other than the traced one (no baked-in sizes)
        for shape in shapes:
            x = torch.rand(1, 1, *shape)
            y = scripted(x)
            assert y.shape == (1, num_classes, *shape) and torch.allclose(y, net(x), atol=1e-5), shape


@pytest.mark.parametrize("method,dataset,scdl", SMOKE, ids=[_id(c) for c in SMOKE])
def test_shipped_bundle_trains_evaluates_infers(method, dataset, scdl, phantom, tmp_path):
    bundle = tmp_path / bundle_name(method, dataset)
    shutil.copytree(REPO_ROOT / "bundles" / bundle.name, bundle)
    data = {"dataset_dir": str(phantom.parent), "datalist": str(phantom), "device": "cpu"}
    settings = {**tiny(method, scdl), **data}
    num_classes = 14 if dataset == "synapse" else 16

    # --- train: properties, run, finalize
    train = _workflow(bundle, ["train"], "train", scdl, **settings, **{"train#trainer#max_epochs": 1})
    train.initialize()
    assert train.check_properties() == []
    train.run()
    train.finalize()
    models = bundle / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_final.pt").is_file()
    state = torch.load(models / "checkpoint_final.pt", weights_only=True)
    expected = {"method", "optimizer", "lr_scheduler", "scaler", "trainer"}
    if method in TWO_NETWORKS:
        expected |= {"optimizer_b", "lr_scheduler_b"}
    assert expected <= set(state)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"]  # one full epoch
    assert not any(k.startswith("module.") or ".module." in k for k in state["method"])
    assert any(".scdl." in k for k in state["method"]) == scdl
    if scdl:  # SCDL wraps every network of the baseline (both networks of the two-network methods)
        method_obj = train.parser.get_parsed_content("method")
        assert sorted(p.split(".")[0] for p in method_obj.targets) == sorted(method_obj.network_names)
        assert len(method_obj.network_names) == (2 if method in TWO_NETWORKS else 1)
    output = train.parser.get_parsed_content("train#trainer").state.output[0]
    assert np.isfinite(float(output["loss"])) and ("loss_scdl" in output) == scdl

    # --- evaluate overlay: loads model.pt, writes metrics and inverted predictions of the test split
    evaluate = _workflow(bundle, ["train", "evaluate"], "train", scdl, **settings, output_dir=str(tmp_path / "eval"))
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    test_case = json.loads(phantom.read_text())["test"][0]
    pred_file = tmp_path / "eval" / "predictions" / f"{test_case['case_id']}_seg.nii.gz"
    assert pred_file.is_file() and (tmp_path / "eval" / "metrics.csv").is_file()
    ref, pred = nib.load(test_case["image"]), nib.load(str(pred_file))
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    assert int(np.asanyarray(pred.dataobj).max()) < num_classes

    # --- inference (standalone config), then the same with the exported TorchScript network
    small = _network_overrides(method, scdl)
    common = {**small, "device": "cpu", "num_workers": 0, "progress": False, "input_files": [test_case["image"]]}
    infer = _workflow(bundle, ["inference"], "inference", scdl, **common, output_dir=str(tmp_path / "infer"))
    infer.initialize()
    assert infer.check_properties() == []
    infer.run()
    infer.finalize()
    out = nib.load(str(tmp_path / "infer" / f"{test_case['case_id']}_seg.nii.gz"))
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    # same weights, same transforms: the evaluate overlay and the inference config agree voxel for voxel
    assert np.array_equal(np.asanyarray(out.dataobj), np.asanyarray(pred.dataobj))

    if (method, dataset, scdl) not in TORCHSCRIPT_RUNS:
        return
    ts = models / "model.ts"
    _export(bundle, export_network_id(scdl), models / "model.pt", ts, small, small["patch_size"], scdl)
    # the checkpoint loader is switched off by its id (no list position)
    scripted = _workflow(bundle, ["inference"], "inference", scdl, **common, output_dir=str(tmp_path / "infer_ts"),
                         network=f"$torch.jit.load('{ts}')", **{"checkpoint_loader#_disabled_": True})  # fmt: skip
    scripted.initialize()
    scripted.run()
    scripted.finalize()
    out_ts = nib.load(str(tmp_path / "infer_ts" / f"{test_case['case_id']}_seg.nii.gz"))
    # the TorchScript file alone (for SCDL: with the prior path inside) reproduces the checkpoint's labels
    assert np.array_equal(np.asanyarray(out_ts.dataobj), np.asanyarray(out.dataobj))


def test_verify_metadata_rejects_a_broken_metadata(tmp_path):
    meta = json.loads((REPO_ROOT / "bundles" / "cps_synapse" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="outputs"):
        verify_metadata(meta_file=str(bad), filepath=str(schema_path()))


def test_precision_keys_switch_training_and_inference_to_the_fast_path(phantom, tmp_path):
    """``--precision bf16 --channels_last true`` reaches the trainer, the validation inferer and inference.json."""
    bundle = tmp_path / "cps_synapse"
    shutil.copytree(REPO_ROOT / "bundles" / bundle.name, bundle)
    fast = {"precision": "bf16", "channels_last": True, "device": "cpu"}
    expected = "bf16" if cpu_bf16_support()[0] else "fp32"  # logged fallback where the CPU has no bf16
    train = _workflow(bundle, ["train"], "train", **tiny("cps"), **fast, datalist=str(phantom),
                      **{"train#trainer#max_epochs": 1, "train#trainer#epoch_length": 1})  # fmt: skip
    train.initialize()
    trainer = train.parser.get_parsed_content("train#trainer")
    assert (trainer.precision.requested, trainer.precision.precision, trainer.precision.channels_last) == ("bf16", expected, True)
    validate = train.parser.get_parsed_content("validate#inferer")
    assert isinstance(validate, PolicyInferer) and validate.policy.precision == "bf16" and validate.policy.channels_last
    seen = []
    trainer.method.network_a.register_forward_hook(lambda module, args, out: seen.append((module.training, out.dtype)))
    train.run()
    train.finalize()
    assert trainer.state.iteration == 1 and (bundle / "models" / "model.pt").is_file()
    dtype = torch.bfloat16 if expected == "bf16" else torch.float32
    assert (True, dtype) in seen and (False, dtype) in seen  # the training step and the validation windows
    conv = next(p for p in trainer.method.network_a.parameters() if p.ndim == 5 and p.shape[1] > 1 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()

    image = json.loads(phantom.read_text())["test"][0]["image"]
    cli = {**fast, "channels_last": "true"}  # as `--channels_last true` arrives from the command line (a string)
    infer = _workflow(bundle, ["inference"], "inference", **_network_overrides("cps", False), **cli, num_workers=0,
                      progress=False, input_files=[image], output_dir=str(tmp_path / "infer"))  # fmt: skip
    infer.initialize()
    policy = infer.parser.get_parsed_content("inferer").policy
    assert (policy.precision, policy.channels_last) == ("bf16", True)
    seen.clear()
    infer.parser.get_parsed_content("network").networks[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    infer.run()
    infer.finalize()
    assert seen and set(seen) == {dtype}
    out = nib.load(str(next((tmp_path / "infer").glob("*_seg.nii.gz"))))
    assert out.shape == nib.load(image).shape


def test_every_semi_supervised_variant_is_smoke_tested():
    """Together, SMOKE and the per-method tests run train / evaluate / inference for every SSL bundle x {baseline, SCDL};
    a comparator variant (LEAN) left out has its Synapse twin or its bundle's other variant run, and is verified through it."""
    ssl = {c for c in VARIANTS if c[0] != "supervised"}
    run = set(SMOKE) | set(COVERED_ELSEWHERE)
    assert not set(SMOKE) & set(COVERED_ELSEWHERE) and len(ssl) == 34
    for method, dataset, scdl in ssl - run:
        assert method in LEAN and {(method, "synapse", scdl), (method, "synapse", not scdl)} & run, (method, dataset, scdl)
        assert (method, "synapse", False) in VERIFIED
    assert set(VARIANTS) - set(VERIFIED) <= {c for c in VARIANTS if c[0] in LEAN}
    for case, test_file in COVERED_ELSEWHERE.items():
        text = (REPO_ROOT / "tests" / "bundles" / test_file).read_text()
        assert "evaluate" in text and ("infer" in text or "inference" in text), (case, test_file)
