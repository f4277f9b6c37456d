"""Command line of the data layer: ``python -m scdl_monai.data COMMAND [--flags]``.

Commands:
    datalist   build a datalist JSON from a downloaded release and an official split
    verify     check every file of a datalist (readable, 3-D, shapes/affines, label ids, NaN)
    phantom    write a synthetic dataset (delegates to ``scdl_monai.data.phantom.phantom_cli``)
    labelmap   remap label ids (delegates to ``scdl_monai.data.transforms.labelmap_cli``)

Examples:
    python -m scdl_monai.data datalist --dataset synapse --root /data/Synapse --split synapse_2023 \\
        --labeled 20p --out datalists/synapse_20p.json
    python -m scdl_monai.data verify --datalist datalists/synapse_20p.json --dataset synapse

User errors (unknown option, missing file, failed check) print one message naming the file or
key on stderr and exit with status 1; set ``SCDL_MONAI_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

from scdl_monai.data.datalists import DATALIST_KEYS, build_datalist
from scdl_monai.data.integrity import verify_datalist
from scdl_monai.data.phantom import phantom_cli
from scdl_monai.data.transforms import labelmap_cli
from scdl_monai.data.utils import run_fire


def datalist(
    dataset: str,
    root: str,
    labeled: str,
    out: str,
    split: str | None = None,
    relative: bool = False,
) -> None:
    """Write a datalist JSON (keys training, unlabeled, validation, test) for an official split.

    Args:
        dataset: "synapse" or "amos".
        root: folder the release was extracted into (layout auto-detected).
        labeled: labeled fraction of the split, e.g. 20p, 0.2, 5p, or "all".
        out: output JSON file (written atomically).
        split: official split (default per dataset: synapse_2023, amos) or a folder of split files.
        relative: store paths relative to the output file's folder.
    """
    result = build_datalist(dataset, root, labeled=labeled, split=split, out=out, relative=relative)
    counts = ", ".join(f"{k} {len(result[k])}" for k in DATALIST_KEYS)
    print(f"wrote {out}: {result['name']} split {result['split']} labeled {result['labeled']} ({counts})")


def verify(
    datalist: str,
    dataset: str | None = None,
    num_classes: int | None = None,
    keys: str | list[str] | None = None,
    affine_atol: float = 1e-3,
    num_workers: int = 1,
    progress: bool = False,
    ct: bool = False,
) -> None:
    """Check every image/label of a datalist JSON; list all problems and exit 1 when any.

    Args:
        datalist: datalist JSON file.
        dataset: dataset name giving the number of classes (synapse 14, amos 16).
        num_classes: number of classes C instead (label ids must lie in [0, C)).
        keys: only check these datalist keys.
        affine_atol: tolerance in mm when comparing image and label affines.
        num_workers: files read in parallel.
        progress: show a progress bar.
        ct: also check that the images look like CT in Hounsfield units (not MR, not normalised).
    """
    n = verify_datalist(
        datalist,
        num_classes=num_classes,
        dataset=dataset,
        keys=keys,
        affine_atol=affine_atol,
        num_workers=num_workers,
        progress=progress,
        ct=ct,
    )
    print(f"{datalist}: {n} entries checked, no problem found")


# the real functions (not *args/**kwargs wrappers), so that `COMMAND --help` shows their flags
COMMANDS = {"datalist": datalist, "verify": verify, "phantom": phantom_cli, "labelmap": labelmap_cli}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 1 user error)."""
    # user errors: message only, no traceback
    return run_fire(COMMANDS, argv, "scdl_monai.data", reraise=bool(os.environ.get("SCDL_MONAI_DEBUG")))


if __name__ == "__main__":
    sys.exit(main())
