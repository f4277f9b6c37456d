"""Datalist builders on fake release trees whose file names are the real ids of the shipped splits.

Only file names matter to the builder, so the trees hold empty placeholder files.
"""

import json
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

from scdl_monai.data.datalists import (
    DATALIST_KEYS,
    MissingCasesError,
    build_datalist,
    detect_layout,
    load_official_split,
    resolve_labeled,
    write_datalist,
)
from scdl_monai.data.datasets import read_split, split_dir

SYNAPSE_SPLITS = {"synapse_2023": ("10p", "20p", "40p"), "synapse_current": ("0.2",)}


def _ids(split: str, name: str) -> list[str]:
    return read_split(split_dir(split) / f"{name}.txt")


def _all_synapse_ids() -> list[str]:
    ids = set()
    for split in SYNAPSE_SPLITS:
        for name in ("train", "eval", "test"):
            ids.update(_ids(split, name))
    return sorted(ids)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


@pytest.fixture
def synapse_release(tmp_path):
    """``RawData/Training/{img,label}`` with every labelled case named by the two Synapse splits."""
    root = tmp_path / "Synapse"
    for cid in _all_synapse_ids():
        _touch(root / "RawData" / "Training" / "img" / f"img{cid}.nii.gz")
        _touch(root / "RawData" / "Training" / "label" / f"label{cid}.nii.gz")
    return root


@pytest.fixture
def synapse_msd(tmp_path):
    """MSD-like ``imagesTr/img00XX.nii`` + ``labelsTr/label00XX.nii`` (uncompressed suffix)."""
    root = tmp_path / "SynapseMSD"
    for cid in _all_synapse_ids():
        _touch(root / "imagesTr" / f"img{cid}.nii")
        _touch(root / "labelsTr" / f"label{cid}.nii")
    return root


@pytest.fixture
def amos_release(tmp_path):
    """``imagesTr``/``labelsTr`` for train+eval ids, ``imagesVa``/``labelsVa`` for the test ids."""
    root = tmp_path / "amos22"
    for cid in _ids("amos", "train") + _ids("amos", "eval"):
        _touch(root / "imagesTr" / f"{cid}.nii.gz")
        _touch(root / "labelsTr" / f"{cid}.nii.gz")
    for cid in _ids("amos", "test"):
        _touch(root / "imagesVa" / f"{cid}.nii.gz")
        _touch(root / "labelsVa" / f"{cid}.nii.gz")
    return root


def _check_against_split_files(dl: dict, split: str, tag: str) -> None:
    expected = {
        "training": _ids(split, f"labeled_{tag}"),
        "unlabeled": _ids(split, f"unlabeled_{tag}"),
        "validation": _ids(split, "eval"),
        "test": _ids(split, "test"),
    }
    for key in DATALIST_KEYS:
        assert [e["case_id"] for e in dl[key]] == expected[key], key
    for key in ("training", "validation", "test"):
        for e in dl[key]:
            assert Path(e["image"]).is_absolute() and Path(e["label"]).is_absolute()
            assert e["case_id"] in Path(e["image"]).name and e["case_id"] in Path(e["label"]).name
    assert all(set(e) == {"image", "case_id"} for e in dl["unlabeled"])


@pytest.mark.parametrize("split,tag", [(s, t) for s, tags in SYNAPSE_SPLITS.items() for t in tags])
def test_synapse_release_layout_matches_split_files(synapse_release, split, tag):
    dl = build_datalist("synapse", synapse_release, labeled=tag, split=split)
    assert dl["layout"] == "release" and dl["split"] == split and dl["labeled"] == tag
    _check_against_split_files(dl, split, tag)
    assert all("/RawData/Training/label/label" in e["label"] for e in dl["test"])


def test_synapse_msd_layout_and_nii_suffix(synapse_msd):
    dl = build_datalist("synapse", synapse_msd, labeled="20p")  # default split synapse_2023
    assert dl["layout"] == "msd" and dl["split"] == "synapse_2023"
    _check_against_split_files(dl, "synapse_2023", "20p")
    assert dl["training"][0]["image"].endswith(f"imagesTr/img{dl['training'][0]['case_id']}.nii")
    assert {len(dl[k]) for k in DATALIST_KEYS} == {4, 16, 4, 6}


def test_synapse_root_may_be_rawdata(synapse_release):
    dl = build_datalist("synapse", synapse_release / "RawData", labeled="10p")
    assert len(dl["training"]) == 2 and len(dl["unlabeled"]) == 18


def test_amos_counts_and_folders(amos_release):
    dl = build_datalist("amos", amos_release, labeled="5p")
    _check_against_split_files(dl, "amos", "5p")
    assert [len(dl[k]) for k in DATALIST_KEYS] == [10, 206, 24, 120]
    assert all("/imagesVa/" in e["image"] and "/labelsVa/" in e["label"] for e in dl["test"])
    assert all("/imagesTr/" in e["image"] for k in ("training", "unlabeled", "validation") for e in dl[k])
    assert dl["labels"]["13"] == "duodenum" and len(dl["labels"]) == 16


def test_equivalent_fraction_tags(synapse_release):
    assert resolve_labeled(split_dir("synapse_current"), "20p") == "0.2"
    assert resolve_labeled(split_dir("synapse_2023"), 0.2) == "20p"
    assert resolve_labeled(split_dir("synapse_2023"), "labeled_40p") == "40p"
    assert resolve_labeled(split_dir("amos"), 10) == "10p"
    dl = build_datalist("synapse", synapse_release, labeled=0.2, split="synapse_current")
    assert dl["labeled"] == "0.2" and len(dl["training"]) == 4


def test_full_supervision(synapse_release):
    split = load_official_split("synapse", "all")
    assert split.labeled == _ids("synapse_2023", "train") and split.unlabeled == []


def test_unknown_labeled_fraction_suggests(synapse_release):
    with pytest.raises(ValueError, match=r"labeled='25p'.*did you mean '20p'.*10p, 20p, 40p"):
        build_datalist("synapse", synapse_release, labeled="25p")
    with pytest.raises(ValueError, match=r"available: 2p, 5p, 10p"):
        build_datalist("amos", synapse_release, labeled="20p")  # upstream AMOS 20p omitted on purpose


def test_unknown_split_and_dataset(synapse_release):
    with pytest.raises(ValueError, match=r"split='synapse_2032'.*did you mean 'synapse_2023'"):
        build_datalist("synapse", synapse_release, labeled="20p", split="synapse_2032")
    with pytest.raises(ValueError, match="amos"):
        build_datalist("synapse", synapse_release, labeled="20p", split="amos")
    with pytest.raises(ValueError, match="synapse"):
        build_datalist("synapsee", synapse_release, labeled="20p")


def test_missing_files_one_error_lists_every_file(synapse_release, tmp_path):
    training = synapse_release / "RawData" / "Training"
    labeled_case, unlabeled_case, test_case = "0002", "0001", "0004"  # synapse_2023 20p roles
    gone = [
        training / "img" / f"img{labeled_case}.nii.gz",
        training / "label" / f"label{labeled_case}.nii.gz",
        training / "img" / f"img{unlabeled_case}.nii.gz",
        training / "label" / f"label{test_case}.nii.gz",
    ]
    for path in gone:
        path.unlink()
    (training / "label" / f"label{unlabeled_case}.nii.gz").unlink()  # unlabeled cases need no label
    out = tmp_path / "out" / "dl.json"
    with pytest.raises(MissingCasesError) as info:
        build_datalist("synapse", synapse_release, labeled="20p", out=out)
    assert isinstance(info.value, FileNotFoundError)
    assert sorted(info.value.missing) == sorted(gone)
    message = str(info.value)
    assert message.startswith("4 file(s)")
    assert all(str(path) in message for path in gone)
    assert not out.exists() and not out.parent.exists()


def test_missing_amos_test_case_is_reported_in_imagesva(amos_release):
    (amos_release / "imagesVa" / "amos_0008.nii.gz").unlink()
    with pytest.raises(MissingCasesError) as info:
        build_datalist("amos", amos_release, labeled="2p")
    assert info.value.missing == [amos_release / "imagesVa" / "amos_0008.nii.gz"]


def test_unknown_layout_lists_what_was_searched(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"RawData/Training/img/.*imagesTr/"):
        detect_layout("synapse", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        detect_layout("amos", tmp_path / "nope")


@pytest.mark.parametrize("relative", [False, True])
def test_round_trip_through_load_decathlon_datalist(amos_release, tmp_path, relative):
    out = tmp_path / "lists" / "amos_2p.json"
    dl = build_datalist("amos", amos_release, labeled="2p", out=out, relative=relative)
    stored = json.loads(out.read_text())
    assert Path(stored["training"][0]["image"]).is_absolute() is (not relative)
    for key in DATALIST_KEYS:
        loaded = load_decathlon_datalist(out, data_list_key=key)
        assert loaded == dl[key], key
    assert sorted(p.name for p in out.parent.iterdir()) == ["amos_2p.json"]  # no temp file left


def test_relative_needs_out(synapse_release):
    with pytest.raises(ValueError, match="relative=True needs out"):
        build_datalist("synapse", synapse_release, labeled="20p", relative=True)


def test_write_datalist_replaces_existing_file(tmp_path):
    out = tmp_path / "dl.json"
    out.write_text("old")
    write_datalist({"training": [{"image": str(tmp_path / "a.nii.gz"), "case_id": "a"}]}, out, relative=True)
    assert json.loads(out.read_text()) == {"training": [{"image": "a.nii.gz", "case_id": "a"}]}
    with pytest.raises(ValueError, match="is a folder"):
        write_datalist({}, tmp_path)


def test_split_file_with_one_id_parses_as_list(tmp_path, synapse_release):
    folder = tmp_path / "my_split"
    folder.mkdir()
    (folder / "train.txt").write_text("0001\n0002\n")
    (folder / "labeled_half.txt").write_text("0002")  # no trailing newline
    (folder / "eval.txt").write_text("# held out\n0003\n")
    (folder / "test.txt").write_text("0004\n")
    assert read_split(folder / "eval.txt") == ["0003"]
    assert read_split(folder / "labeled_half.txt") == ["0002"]
    dl = build_datalist("synapse", synapse_release, labeled="half", split=folder)
    assert [[e["case_id"] for e in dl[k]] for k in DATALIST_KEYS] == [["0002"], ["0001"], ["0003"], ["0004"]]


def test_labeled_ids_outside_train_rejected(tmp_path, synapse_release):
    folder = tmp_path / "bad_split"
    folder.mkdir()
    files = {"train.txt": "0001\n", "labeled_x.txt": "0009\n", "eval.txt": "0003\n", "test.txt": "0004\n"}
    for name, text in files.items():
        (folder / name).write_text(text)
    with pytest.raises(ValueError, match=r"labeled_x.txt: ids not in train.txt: \['0009'\]"):
        build_datalist("synapse", synapse_release, labeled="x", split=folder)


@pytest.mark.parametrize(
    "split,sizes,tags",
    [
        ("synapse_2023", (20, 4, 6), {"10p": 2, "20p": 4, "40p": 8}),
        ("synapse_current", (20, 4, 6), {"0.2": 4}),
        ("amos", (216, 24, 120), {"2p": 4, "5p": 10, "10p": 21}),
    ],
)
def test_shipped_split_files_match_protocol_table(split, sizes, tags):
    train, evaluation, test = (_ids(split, n) for n in ("train", "eval", "test"))
    assert (len(train), len(evaluation), len(test)) == sizes
    assert not set(train) & set(evaluation) and not set(train) & set(test) and not set(evaluation) & set(test)
    for tag, n in tags.items():
        labeled, unlabeled = _ids(split, f"labeled_{tag}"), _ids(split, f"unlabeled_{tag}")
        assert len(labeled) == n
        assert sorted(labeled + unlabeled) == sorted(train)
