"""scdl_monai.bundles: overlay composition, self-contained write-out, metadata, CLI, checkpoints, and
the hygiene of the shipped configs (handlers by id, no lambdas, SCDL as one overlay)."""

import json
import os
import re
import time

import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata

from scdl_monai.bundles import (
    METHODS,
    NO_SCDL,
    SCDL_METHODS,
    SHIPPED,
    UNSHIPPED_METHODS,
    VARIANTS,
    build_metadata,
    bundle_name,
    compare_bundle_dirs,
    component_files,
    components_dir,
    compose_config,
    default_protocol,
    export_network_id,
    extra_overlays,
    scdl_available,
    schema_path,
    write_bundle,
)
from scdl_monai.cli.bundle_tool import main
from scdl_monai.handlers.checkpoint import latest_checkpoint, resume_checkpoint
from scdl_monai.data.transforms import protocol_transforms

from .conftest import REPO_ROOT


def _plain(value):
    """Transform arguments as comparable plain Python (arrays, tuples, enums and dtypes included)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars, tensors
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return str(getattr(value, "value", value))  # enums (MONAI modes) and dtypes


def _key_args(transform) -> tuple[str, dict]:
    """A preprocessing transform's type and the arguments that decide its output.

    Keys for every transform; sizes, spacing, orientation, intensity window, interpolation modes,
    class counts and output dtypes where the transform has them. An unknown type fails, so a new
    transform in a chain cannot be compared by its name only.
    """
    name = type(transform).__name__
    args = {"keys": _plain(tuple(transform.keys))}
    if name == "Orientationd":
        args |= {"axcodes": transform.ornt_transform.axcodes, "labels": _plain(transform.ornt_transform.labels)}
    elif name == "Spacingd":
        args |= {"pixdim": _plain(transform.spacing_transform.pixdim), "mode": _plain(transform.mode)}
    elif name == "ScaleIntensityRanged":
        s = transform.scaler
        args |= {"window": (s.a_min, s.a_max), "out": (s.b_min, s.b_max), "clip": s.clip}
    elif name == "ScaleIntensityd":
        args |= {"range": (transform.scaler.minv, transform.scaler.maxv)}
    elif name == "Resized":
        args |= {"spatial_size": _plain(transform.resizer.spatial_size), "mode": _plain(transform.mode)}
    elif name == "SpatialPadd":
        args |= {"spatial_size": _plain(transform.padder.spatial_size)}
    elif name in ("RandSpatialCropd", "CenterSpatialCropd"):
        args |= {"roi_size": _plain(transform.cropper.roi_size)}
    elif name == "ReferenceRandomCropd":
        args |= {"roi_size": _plain(transform.roi_size), "margin": transform.margin}
    elif name == "RandCropByLabelClassesd":
        c = transform.cropper
        args |= {"spatial_size": _plain(c.spatial_size), "ratios": _plain(c.ratios), "num_classes": c.num_classes,
                 "num_samples": c.num_samples, "label_key": transform.label_key}  # fmt: skip
    elif name == "ClassesToIndicesd":
        args |= {"num_classes": transform.converter.num_classes}
    elif name == "EnsureTyped":
        args |= {"dtype": _plain(transform.dtype)}
    elif name not in ("LoadImaged", "EnsureChannelFirstd", "DeleteItemsd"):
        raise AssertionError(f"_key_args: no key arguments known for {name}; add them here")
    return name, args


def test_committed_bundles_equal_their_regeneration(tmp_path):
    """The committed bundles/ folders are exactly what the components generate (maintainers edit the components)."""
    problems = []
    for method, dataset in SHIPPED:
        name = bundle_name(method, dataset)
        write_bundle(method, dataset, tmp_path / name)
        problems += [f"{name}: {p}" for p in compare_bundle_dirs(tmp_path / name, REPO_ROOT / "bundles" / name)]
    assert problems == [], "run `python -m scdl_monai.cli.bundle_tool write-all`:\n" + "\n".join(problems)
    assert sorted(p.name for p in (REPO_ROOT / "bundles").iterdir()) == sorted(bundle_name(m, d) for m, d in SHIPPED)


def test_written_bundle_layout(tmp_path):
    out = write_bundle("cps", "amos", tmp_path / "b")
    expected = {
        "LICENSE",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/inference.json",
        "configs/multi_gpu_train.json",
        "configs/scdl.json",  # the SCDL plug-in, one overlay
        "configs/metadata.json",
        "configs/logging.conf",
        "docs/README.md",
        "docs/data_license.txt",
        "models/.gitkeep",
        "configs/cps_native.json",  # the native, class-balanced CPS variant (an overlay)
        "configs/cps_native_inference.json",
    }
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == expected
    assert "Apache License" in (out / "LICENSE").read_text()
    assert "not" in (out / "docs" / "data_license.txt").read_text() and "AMOS" in (out / "docs" / "data_license.txt").read_text()
    readme = (out / "docs" / "README.md").read_text()
    for command in ("configs/train.json", "multi_gpu_train.json", "evaluate.json", "ckpt_export", "scdl_monai.cli.inference",
                    "--tracking mlflow", "'configs/train.json','configs/scdl.json'", "'configs/inference.json','configs/scdl.json'",
                    "'configs/train.json','configs/evaluate.json','configs/scdl.json'",
                    "'configs/train.json','configs/multi_gpu_train.json','configs/scdl.json'"):  # fmt: skip
        assert command in readme, command
    assert "do not edit" not in readme and "by hand" not in readme
    supervised = write_bundle("supervised", "amos", tmp_path / "s")
    assert not (supervised / "configs" / "scdl.json").exists()  # SCDL plugs into the semi-supervised methods
    assert not (write_bundle("cps", "amos", tmp_path / "u", backbone="unet") / "configs" / "scdl.json").exists()
    # no file is left half-written (temporary files are renamed into place)
    assert not [p for p in out.rglob(".*") if p.name != ".gitkeep"]


def test_compose_merges_components_in_order():
    cps = compose_config("train", "cps", "synapse")
    sup = compose_config("train", "supervised", "amos", backbone="unet")
    # dataset overlay: classes; backbone overlay: network_def; method overlay: method_def
    assert cps["num_classes"] == 14 and len(cps["class_names"]) == 14
    assert sup["num_classes"] == 16 and sup["network_def"]["name"] == "unet"
    assert cps["method_def"]["_target_"] == "scdl_monai.methods.cps.CPS"
    assert sup["method_def"]["_target_"] == "scdl_monai.methods.supervised.Supervised"
    # CPS's second network is a textual copy of network_def (an independent instance)
    assert cps["network_b_def"] == "%network_def"
    # handlers by id: "+train#handlers" extended the base list of copies (%id) instead of replacing it
    handlers = cps["train"]["handlers"]
    assert handlers[:2] == ["%train#lr_handler", "%train#validation_handler"]
    assert handlers[-1] == "%train#unsup_weight_handler"
    assert cps["train"]["unsup_weight_handler"]["_target_"] == "scdl_monai.handlers.schedules.UnsupWeightSchedule"
    assert cps["train"]["validation_handler"]["_target_"] == "ValidationHandler"
    assert cps["train"]["trainer"]["optimizer"] == ["@optimizer", "@optimizer_b"]
    assert set(cps["checkpoint_state"]) >= {"method", "optimizer", "optimizer_b", "lr_scheduler_b", "trainer"}
    assert sup["train"]["trainer"]["unlabeled_data_loader"] is None
    # imports only in "imports" (never in an overlay's initialize)
    assert all("import" not in expr for expr in cps["initialize"])


def test_overlays_stay_overlays():
    ev = compose_config("evaluate", "cps", "synapse")
    mg = compose_config("multi_gpu_train", "supervised", "synapse")
    assert "validate#handlers" in ev and "train" not in ev
    assert mg["train#sampler"]["even_divisible"] is True and mg["train#unlabeled_sampler"]["even_divisible"] is True
    assert mg["validate#sampler"]["even_divisible"] is False
    assert "+imports" not in mg and "initialize" in mg and "finalize" in mg
    # multi-GPU touches only what it needs: DDP around whatever `method` is (baseline or SCDL)
    assert mg["train#trainer#method"] == "$@method.wrap_ddp(**@ddp_kwargs)" and "method" not in mg
    assert compose_config("multi_gpu_train", "dhc", "synapse", scdl=True) == compose_config("multi_gpu_train", "dhc", "synapse")


def test_train_transforms_follow_the_native_protocol():
    """The JSON chain is protocol_transforms('native', 'train'): same transforms with the same key arguments."""
    parser = ConfigParser(compose_config("train", "cps", "synapse", protocol="native"))
    parser.update({"patch_size": [32, 32, 32]})
    chain = [_key_args(t) for t in parser.get_parsed_content("train#preprocessing").transforms]
    reference = protocol_transforms("native", "train", num_classes=14, patch_size=(32, 32, 32)).transforms
    assert chain == [_key_args(t) for t in reference]
    args = dict(chain)
    assert args["Orientationd"]["axcodes"] == "RAS"
    assert args["Spacingd"]["pixdim"] == (1.5, 1.5, 2.0)
    assert args["ScaleIntensityRanged"]["window"] == (-125.0, 275.0)
    assert args["RandCropByLabelClassesd"]["spatial_size"] == (32, 32, 32)
    assert args["RandCropByLabelClassesd"]["num_classes"] == 14
    # a changed key argument in the config is seen (not only a changed transform type)
    parser.update({"pixdim": [1.0, 1.0, 1.0], "a_min": -100})
    changed = dict(_key_args(t) for t in parser.get_parsed_content("train#preprocessing", lazy=False).transforms)
    assert changed["Spacingd"]["pixdim"] == (1.0, 1.0, 1.0) and changed["ScaleIntensityRanged"]["window"][0] == -100.0


@pytest.mark.parametrize("method,dataset", SHIPPED)
def test_metadata_valid_against_vendored_schema(method, dataset, tmp_path):
    meta = build_metadata(method, dataset)
    scdl = method in SCDL_METHODS
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    verify_metadata(meta_file=str(path), filepath=str(schema_path()))
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == (14 if dataset == "synapse" else 16)
    assert ("network_b_data_format" in meta) == (method in ("cps", "dhc", "ga_cps", "simis", "cld"))
    assert "required_packages_version" in meta
    assert any("arxiv.org/abs/2603.05202" in r for r in meta["references"]) == scdl
    assert meta["name"].startswith(bundle_name(method, dataset) + " ")
    # both variants are described
    assert list(meta["variants"]) == (["baseline", "scdl"] if scdl else ["baseline"])
    assert ("configs/scdl.json" in meta["description"]) == scdl
    if scdl:
        assert meta["variants"]["scdl"]["config_files"] == ["configs/train.json", "configs/scdl.json"]


def test_every_method_is_shipped_on_both_datasets_with_scdl_as_an_overlay():
    names = {bundle_name(m, d) for m, d in SHIPPED}
    shipped = [m for m in METHODS if m not in UNSHIPPED_METHODS]
    assert UNSHIPPED_METHODS == () and shipped == list(METHODS)
    assert names == {f"{m}_{d}" for m in shipped for d in ("synapse", "amos")} and len(SHIPPED) == 20
    # every semi-supervised bundle (the SCDL paper's baselines among them) ships configs/scdl.json, except SKCDF's
    assert set(NO_SCDL) == {"skcdf"} and set(SCDL_METHODS) == set(shipped) - {"supervised", "skcdf"}
    for m, d in SHIPPED:
        assert (REPO_ROOT / "bundles" / f"{m}_{d}" / "configs" / "scdl.json").is_file() == (m in SCDL_METHODS)
    assert len(VARIANTS) == 20 + 16 and not any("_scdl_" in n for n in names)


def test_skcdf_refuses_scdl_with_the_reason_in_one_line():
    """SCDL cannot wrap SKCDF's training passes: compose_config says why, and the bundle README says the same."""
    for call in (lambda: compose_config("train", "skcdf", "synapse", scdl=True), lambda: compose_config("scdl", "skcdf", "amos")):
        with pytest.raises(ValueError, match="SKCDF's training passes") as err:
            call()
        assert "\n" not in str(err.value) and "encode/decode hooks" in str(err.value)
    assert not scdl_available("skcdf")
    readme = (REPO_ROOT / "bundles" / "skcdf_synapse" / "docs" / "README.md").read_text()
    meta = build_metadata("skcdf", "amos")
    assert NO_SCDL["skcdf"] in readme and list(meta["variants"]) == ["baseline"] and "configs/scdl.json" not in meta["description"]


def test_names_follow_the_method_default_protocol():
    assert [default_protocol(m) for m in ("supervised", "cps", "dhc", "genericssl", "ga_cps", "magicnet", "ga_magicnet")] == [
        "native", "dhc", "dhc", "dhc", "ga", "ga", "ga"]  # fmt: skip
    assert {default_protocol(m) for m in ("simis", "cld", "skcdf")} == {"dhc"}  # the DHC repository's / SKCDF's grid
    assert bundle_name("dhc", "synapse") == bundle_name("dhc", "synapse", protocol="dhc") == "dhc_synapse"
    assert bundle_name("dhc", "amos", protocol="native") == "dhc_amos_native"
    assert bundle_name("cps", "synapse", backbone="unet", protocol="ga") == "cps_synapse_unet_ga"
    with pytest.raises(ValueError, match="backbone"):
        bundle_name("magicnet", "synapse", backbone="unet")
    with pytest.raises(ValueError, match="SCDL overlay for method 'cps' with backbone 'segresnet'"):
        compose_config("train", "cps", "synapse", backbone="segresnet", scdl=True)
    with pytest.raises(ValueError, match="not semi-supervised"):
        compose_config("scdl", "supervised", "synapse")
    with pytest.raises(ValueError, match="scdl"):
        compose_config("train", "cps", "synapse", scdl="maybe")


def test_method_and_scdl_composition_order():
    root = components_dir()
    rel = [p.relative_to(root).as_posix() for p in component_files("train", "ga_magicnet", "amos", scdl=True)]
    assert rel == ["train.json", "datasets/amos.json", "backbones/vnet.json", "protocols/ga/train.json",
                   "methods/magicnet/train.json", "methods/ga_magicnet/train.json", "scdl/scdl.json"]  # fmt: skip
    rel = [p.relative_to(root).as_posix() for p in component_files("scdl", "dhc", "synapse")]
    assert rel == ["scdl/scdl.json", "scdl/network_b.json"]  # network B of the two-network methods
    rel = [p.relative_to(root).as_posix() for p in component_files("multi_gpu_train", "dhc", "synapse", scdl=True)]
    assert rel == ["multi_gpu_train.json"]
    ga = compose_config("train", "ga_magicnet", "synapse")
    assert ga["ga_losses"] is True and ga["max_iterations"] == 17000 and ga["poly_iterations"] == 70000
    assert ga["method_def"]["_target_"] == "scdl_monai.methods.magicnet.MagicNet"
    scdl = compose_config("inference", "dhc", "amos", scdl=True)
    assert scdl["network"] == "$@inference_network_def.to(@device)" and scdl["n_filters"] == 32
    assert scdl["inference_network_def"]["networks"] == ["@network_a_def", "@network_b_def"]
    assert scdl["network_a_def"]["_target_"] == "scdl_monai.networks.prior_injection.wrap_backbone"
    assert export_network_id(True) == export_network_id(False) == "inference_network_def"
    # the base configs are untouched by the plug-in: same baseline keys with and without SCDL
    base = compose_config("train", "dhc", "amos")
    # SCDL wraps by reference: the networks around `network_def`, the method around `method_def`, the
    # optimizer around `optimizer_def`; nothing else of the baseline changes
    changed = ("network_a_def", "network_b_def", "method", "optimizer")
    with_scdl = compose_config("train", "dhc", "amos", scdl=True)
    assert {k: v for k, v in with_scdl.items() if k in base and k not in changed} == {k: v for k, v in base.items() if k not in changed}
    assert base["network_a_def"] == "@network_def" and with_scdl["network_a_def"]["backbone"] == "@network_def"
    assert with_scdl["network_b_def"]["backbone"] == base["network_b_def"] == "%network_def"
    assert base["optimizer"] == "@optimizer_def" and with_scdl["optimizer"]["optimizer"] == "@optimizer_def"
    assert with_scdl["scdl_method_def"]["base_method"] == "@method_def" and with_scdl["method"] == "$@scdl_method_def.to(@device)"
    assert "network_b_def" not in compose_config("scdl", "genericssl", "amos")  # one network: nothing to wrap


def test_written_readmes_describe_the_method(tmp_path):
    dhc = write_bundle("dhc", "synapse", tmp_path / "dhc")
    assert sorted(p.name for p in extra_overlays("dhc")) == ["dhc_diffdw_diffdw.json", "dhc_distdw_distdw.json"]
    for overlay in extra_overlays("dhc"):
        assert (dhc / "configs" / overlay.name).read_text() == overlay.read_text()
    readme = (dhc / "docs" / "README.md").read_text()
    assert "\"['configs/train.json','configs/dhc_distdw_distdw.json']\"" in readme and "DiffDW" in readme
    assert "random 128x128x64 crops" in readme and "--protocol" not in readme.split("## Data")[0]

    ga = (write_bundle("ga_magicnet", "amos", tmp_path / "ga") / "docs" / "README.md").read_text()
    assert "**70,000**" in ga and "**stops training at 17,000**" in ga and "--max_iterations 1000" in ga
    assert "Multi-GPU training is not supported" in ga
    amos = (write_bundle("genericssl", "amos", tmp_path / "gs") / "docs" / "README.md").read_text()
    assert "AMOS is derived, not the reference" in amos and "network_def#name" not in amos

    scdl = write_bundle("ga_cps", "synapse", tmp_path / "scdl")
    text = (scdl / "docs" / "README.md").read_text()
    assert "--method ga_cps --dataset synapse --out DIR" in text and "SCDL plug-in" in text
    assert "ckpt_export inference_network_def" in text and "torch.jit.load('models/model.ts')" in text
    assert "--meta_file configs/metadata.json --config_file \"['configs/inference.json','configs/scdl.json']\"" in text
    assert "--checkpoint_loader#_disabled_ true" in text and "#0#" not in text
    assert '--input_shape "[1, 1, 96, 96, 96]"' in text
    assert "ckpt_export inference_network_def" in (tmp_path / "dhc" / "docs" / "README.md").read_text()


def test_bad_names_and_missing_components(tmp_path):
    with pytest.raises(ValueError, match="method"):
        compose_config("train", "cpss", "synapse")
    with pytest.raises(ValueError, match="dataset"):
        bundle_name("cps", "brats")
    with pytest.raises(ValueError, match="kind"):
        component_files("training", "cps", "synapse")
    with pytest.raises(FileNotFoundError, match="train.json"):
        component_files("train", "cps", "synapse", root=tmp_path)


def test_latest_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        latest_checkpoint(tmp_path)
    for i, name in enumerate(("checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt", "model.pt")):
        if name == "checkpoint_epoch=3.pt":
            (tmp_path / name).write_bytes(b"PK\x03\x04 truncated")  # a save killed half-way
        else:
            torch.save({"epoch": i}, tmp_path / name)
        os.utime(tmp_path / name, ns=(time.time_ns(), 1_000_000_000 * (i + 1)))
    with pytest.warns(UserWarning, match="incomplete"):
        assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=2.pt")


def test_cli_write_and_errors(tmp_path, capsys):
    assert main(["write", "--method", "supervised", "--dataset", "synapse", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "configs" / "train.json").is_file()
    assert not (tmp_path / "b" / "configs" / "scdl.json").exists()
    assert main(["write", "--method", "genericssl", "--dataset", "amos", "--out", str(tmp_path / "s")]) == 0
    assert "genericssl_amos" in capsys.readouterr().out
    assert "scdl_method_def" in json.loads((tmp_path / "s" / "configs" / "scdl.json").read_text())
    assert "scdl_method_def" not in json.loads((tmp_path / "s" / "configs" / "train.json").read_text())
    assert main(["write", "--method", "nope", "--dataset", "synapse", "--out", str(tmp_path / "c")]) == 1
    assert "method" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("protocol", ["dhc", "ga"])
def test_protocol_overlays_follow_protocol_transforms(protocol, tmp_path):
    """The dhc/ga overlays spell out the same transform sequence as protocol_transforms(protocol, ...)."""
    parser = ConfigParser(compose_config("train", "cps", "synapse", protocol=protocol))
    for section, stage, keys in (
        ("train#preprocessing", "train", ("image", "label")),
        ("train#unlabeled_preprocessing", "train", ("image",)),
        ("validate#preprocessing", "eval", ("image", "label")),
    ):
        chain = [_key_args(t) for t in parser.get_parsed_content(section).transforms]
        reference = [_key_args(t) for t in protocol_transforms(protocol, stage, keys=keys).transforms]
        if section == "validate#preprocessing" and protocol == "dhc":
            # model selection on one centre crop per case (DHC reference), not in evaluate.json
            assert chain.pop() == ("CenterSpatialCropd", {"keys": ("image", "label"), "roi_size": (128, 128, 64)})
        assert chain == reference, section
    infer = ConfigParser(compose_config("inference", "cps", "synapse", protocol=protocol))
    chain = [_key_args(t) for t in infer.get_parsed_content("preprocessing").transforms]
    assert chain == [_key_args(t) for t in protocol_transforms(protocol, "infer").transforms]
    args = dict(chain)
    assert args["Resized"]["spatial_size"] == (160, 160, 80)
    assert args["ScaleIntensityRanged"]["window"] == ((-75.0, 275.0) if protocol == "dhc" else (-125.0, 275.0))
    assert bundle_name("supervised", "synapse", protocol=protocol) == f"supervised_synapse_{protocol}"
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(build_metadata("cps", "synapse", protocol=protocol)))
    verify_metadata(meta_file=str(meta), filepath=str(schema_path()))


@pytest.mark.parametrize("kind", ["train", "inference"])
def test_precision_default_follows_amp(kind):
    """One top-level ``precision`` key (default from ``amp``) feeds the trainer and the sliding-window inferer."""
    device_key = "device" if kind == "train" else "sw_device"
    for amp, device, expected in ((False, "cpu", "fp32"), (True, "cpu", "bf16"), (True, "cuda:0", "fp16"), (False, "cuda", "fp32")):
        parser = ConfigParser(compose_config(kind, "dhc", "synapse"))
        parser.update({"amp": amp, device_key: device})
        assert parser.get_parsed_content("precision") == expected
    parser = ConfigParser(compose_config(kind, "dhc", "synapse"))
    parser.update({"precision": "bf16", "channels_last": True})
    policy = parser.get_parsed_content("precision_policy")
    assert (policy.precision, policy.channels_last) == ("bf16", True)
    config = parser.config
    inferer = config["validate"]["inferer"] if kind == "train" else config["inferer"]
    assert inferer["_target_"] == "scdl_monai.engines.policy_inferer.PolicyInferer" and inferer["precision"] == "@precision_policy"
    if kind == "train":
        assert config["train"]["trainer"]["precision"] == "@precision_policy" and "amp" not in config["train"]["trainer"]
    evaluator = config["validate"]["evaluator"] if kind == "train" else config["evaluator"]
    assert evaluator["amp"] is False  # autocast is the inferer's job (one place)


@pytest.mark.parametrize("method,dataset", [c for c in SHIPPED if c[0] in SCDL_METHODS])
def test_scdl_variant_is_monais_merge_of_the_shipped_files(method, dataset):
    """compose_config(..., scdl=True) == what ``--config_file "['configs/<kind>.json','configs/scdl.json']"`` reads."""
    configs = REPO_ROOT / "bundles" / bundle_name(method, dataset) / "configs"
    for kind in ("train", "inference"):
        merged = ConfigParser.load_config_files([str(configs / f"{kind}.json"), str(configs / "scdl.json")])
        assert compose_config(kind, method, dataset, scdl=True) == merged, kind
        assert compose_config(kind, method, dataset) == json.loads((configs / f"{kind}.json").read_text()), kind
    assert compose_config("scdl", method, dataset) == json.loads((configs / "scdl.json").read_text())


def test_overlays_compose_in_either_order():
    """scdl.json wraps by reference and multi_gpu_train.json / evaluate.json touch other ids: no overlay clobbers another."""
    configs = REPO_ROOT / "bundles" / "dhc_synapse" / "configs"

    def read(*names):
        return ConfigParser.load_config_files([str(configs / n) for n in names])

    for overlay in ("evaluate.json", "multi_gpu_train.json", "dhc_distdw_distdw.json"):
        assert read("train.json", overlay, "scdl.json") == read("train.json", "scdl.json", overlay), overlay
    with_all = read("train.json", "multi_gpu_train.json", "scdl.json")
    assert with_all["train"]["trainer"]["method"] == "$@method.wrap_ddp(**@ddp_kwargs)"
    assert with_all["method"] == "$@scdl_method_def.to(@device)"  # DDP wraps the SCDL method


def _shipped_json_and_docs():
    files = sorted((REPO_ROOT / "bundles").rglob("*.json")) + sorted(components_dir().rglob("*.json"))
    return files, sorted((REPO_ROOT / "bundles").rglob("README.md")) + sorted(components_dir().rglob("README.md"))


def test_shipped_configs_address_handlers_by_id_and_hold_no_lambdas():
    """Config hygiene: no handler addressed by list position, no Python lambda, no string-to-bool parsing."""
    configs, docs = _shipped_json_and_docs()
    assert len(configs) > 100 and docs
    position = re.compile(r"handlers#\d")
    for path in configs + docs:
        text = path.read_text()
        assert not position.search(text), f"{path}: a handler addressed by list position"
    for path in configs:
        text = path.read_text()
        assert "lambda" not in text, f"{path}: a Python lambda in a config"
        assert ".lower() in (" not in text, f"{path}: string-to-bool parsing in a config"
    # the position-free ids exist: every entry of a handler list is a copy (%id) of a handler defined by id
    train = compose_config("train", "dhc", "synapse")
    for section in ("train", "validate"):
        for entry in train[section]["handlers"]:
            assert entry.startswith(f"%{section}#") and "_target_" in train[section][entry.rsplit("#", 1)[1]], entry
    inference = compose_config("inference", "dhc", "synapse")
    assert inference["handlers"] == ["%checkpoint_loader", "%stats_handler"]


def test_handler_ids_configure_and_switch_off_handlers(tmp_path):
    """An override of a handler's id reaches the handler instance; ``_disabled_`` drops it from the list."""
    parser = ConfigParser(compose_config("train", "cps", "synapse"))
    parser.update({"n_filters": 4, "bundle_root": str(tmp_path), "val_interval": None,  # no validation handler
                   "validate#dataset#data": [], "num_workers": 0, "train#lr_handler#print_lr": True,
                   "train#tensorboard_handler#_disabled_": True})  # fmt: skip
    handlers = parser.get_parsed_content("train#handlers")
    names = [type(h).__name__ for h in handlers]
    assert "TensorBoardStatsHandler" not in names and "ValidationHandler" not in names and names.count("LrScheduleHandler") == 2
    assert handlers[0].print_lr is True and handlers[names.index("LrScheduleHandler", 1)].print_lr is False


def test_resume_checkpoint(tmp_path):
    assert resume_checkpoint(tmp_path, False) == resume_checkpoint(tmp_path, "false") == ""
    assert resume_checkpoint(tmp_path, "true").endswith("checkpoint*.pt")  # the pattern: the start-up check reports it
    torch.save({"epoch": 1}, tmp_path / "checkpoint_epoch=1.pt")
    assert resume_checkpoint(tmp_path, True) == str(tmp_path / "checkpoint_epoch=1.pt")
    with pytest.raises(ValueError, match="resume` must be true or false, got 'sometimes'"):
        resume_checkpoint(tmp_path, "sometimes")


def test_bundle_components_are_package_data():
    """Every component file is matched by setup.cfg's package_data, so ``write`` works from a non-editable install."""
    import configparser
    from pathlib import PurePosixPath

    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["scdl_monai"].split("\n") if p.strip()]
    package = REPO_ROOT / "scdl_monai"
    files = [p.relative_to(package).as_posix() for p in components_dir().rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) > 30 and components_dir() == package / "resources" / "bundle_components"
    missed = [f for f in files if not any(PurePosixPath(f).match(p) and f.count("/") == p.count("/") for p in patterns)]
    assert missed == [], f"add these to [options.package_data] in setup.cfg: {missed}"


def test_every_scdl_switch_is_documented():
    """Each key of the SCDL overlay (and of its block) has a row in docs/scdl.md's config table."""
    from pathlib import Path

    from scdl_monai.bundles import components_dir

    overlay = json.loads((components_dir() / "scdl" / "scdl.json").read_text())
    table = (Path(__file__).resolve().parents[1] / "docs" / "scdl.md").read_text().split("## Config keys", 1)[1]
    keys = [k for k in overlay if k.startswith("scdl_") and k not in ("scdl_block", "scdl_wrapper", "scdl_method_def")]
    missing = [k for k in keys if f"`{k}`" not in table]
    missing += [f"scdl_block#{k}" for k in overlay["scdl_block"] if f"#{k}`" not in table]
    assert not missing, f"undocumented SCDL config keys: {missing}"
