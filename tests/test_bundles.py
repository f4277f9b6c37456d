"""scdl_monai.bundles: overlay composition, self-contained write-out, metadata, CLI, checkpoints."""

import json
import os
import time

import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata

from scdl_monai.bundles import (
    SHIPPED,
    bundle_name,
    build_metadata,
    compare_bundle_dirs,
    component_files,
    compose_config,
    latest_checkpoint,
    main,
    schema_path,
    write_bundle,
)
from scdl_monai.data.transforms import protocol_transforms

from .conftest import REPO_ROOT


def test_committed_bundles_equal_their_regeneration(tmp_path):
    """The committed bundles/ folders are exactly what the components generate (edit components, not bundles)."""
    problems = []
    for method, dataset in SHIPPED:
        name = bundle_name(method, dataset)
        write_bundle(method, dataset, tmp_path / name)
        problems += [f"{name}: {p}" for p in compare_bundle_dirs(tmp_path / name, REPO_ROOT / "bundles" / name)]
    assert problems == [], "run `python -m scdl_monai.bundles write-all`:\n" + "\n".join(problems)


def test_written_bundle_layout(tmp_path):
    out = write_bundle("cps", "amos", tmp_path / "b")
    expected = {
        "LICENSE",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/inference.json",
        "configs/multi_gpu_train.json",
        "configs/metadata.json",
        "configs/logging.conf",
        "docs/README.md",
        "docs/data_license.txt",
        "models/.gitkeep",
    }
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == expected
    assert "Apache License" in (out / "LICENSE").read_text()
    assert "not" in (out / "docs" / "data_license.txt").read_text() and "AMOS" in (out / "docs" / "data_license.txt").read_text()
    readme = (out / "docs" / "README.md").read_text()
    for command in ("configs/train.json", "multi_gpu_train.json", "evaluate.json", "ckpt_export", "scdl_monai.inference", "--tracking mlflow"):
        assert command in readme
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
    # "+train#handlers" extended the base list instead of replacing it; nested ids reached the trainer
    targets = [h["_target_"] for h in cps["train"]["handlers"]]
    assert targets[:2] == ["LrScheduleHandler", "ValidationHandler"]
    assert targets[-1] == "scdl_monai.handlers.schedules.UnsupWeightSchedule"
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


def test_train_transforms_follow_the_native_protocol():
    """The JSON chain is the same sequence of MONAI transforms as protocol_transforms('native', 'train')."""
    parser = ConfigParser(compose_config("train", "cps", "synapse"))
    parser.update({"patch_size": [32, 32, 32]})
    chain = parser.get_parsed_content("train#preprocessing").transforms
    reference = protocol_transforms("native", "train", num_classes=14, patch_size=(32, 32, 32)).transforms
    assert [type(t).__name__ for t in chain] == [type(t).__name__ for t in reference]
    spacing = [t for t in chain if type(t).__name__ == "Spacingd"][0]
    assert tuple(spacing.spacing_transform.pixdim) == (1.5, 1.5, 2.0)


@pytest.mark.parametrize("method,dataset", SHIPPED)
def test_metadata_valid_against_vendored_schema(method, dataset, tmp_path):
    meta = build_metadata(method, dataset)
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    verify_metadata(meta_file=str(path), filepath=str(schema_path()))
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == (14 if dataset == "synapse" else 16)
    assert ("network_b_data_format" in meta) == (method == "cps")
    assert "required_packages_version" in meta


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
        chain = [type(t).__name__ for t in parser.get_parsed_content(section).transforms]
        reference = [type(t).__name__ for t in protocol_transforms(protocol, stage, keys=keys).transforms]
        assert chain == reference, section
    infer = ConfigParser(compose_config("inference", "cps", "synapse", protocol=protocol))
    chain = [type(t).__name__ for t in infer.get_parsed_content("preprocessing").transforms]
    assert chain == [type(t).__name__ for t in protocol_transforms(protocol, "infer").transforms]
    assert bundle_name("cps", "synapse", protocol=protocol) == f"cps_synapse_{protocol}"
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(build_metadata("cps", "synapse", protocol=protocol)))
    verify_metadata(meta_file=str(meta), filepath=str(schema_path()))
