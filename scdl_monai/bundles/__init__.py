"""MONAI bundles of every method: the shipped layout and the maintainer tool that writes it.

A bundle ``bundles/<method>_<dataset>`` is plain, hand-editable MONAI bundle JSON
(docs/bundles.md)::

    configs/train.json            the baseline, complete (sections initialize / run / finalize)
    configs/evaluate.json         overlay after train.json: CheckpointLoader + metrics and predictions
    configs/inference.json        standalone inference, complete
    configs/multi_gpu_train.json  overlay after train.json: DDP, DistributedSampler, rank-0 handlers
    configs/scdl.json             SSL methods: the SCDL plug-in, one overlay for all of the above
    configs/<extra>.json          method overlays (e.g. DHC's Table 3 ablations, ``cps_native``)
    configs/metadata.json, configs/logging.conf, docs/README.md, docs/data_license.txt, LICENSE

Overlays are added to the ``--config_file`` list and compose without clobbering each other::

    python -m monai.bundle run --config_file "['configs/train.json','configs/scdl.json']"
    python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json','configs/scdl.json']"
    python -m monai.bundle run --config_file "['configs/inference.json','configs/scdl.json']"

The baseline defines the method once; ``scdl.json`` wraps it by reference (``network_a_def`` /
``network_b_def`` around ``@network_def``, ``scdl_method_def`` around ``@method_def``, ``optimizer``
around ``@optimizer_def``), and ``multi_gpu_train.json`` touches only the samplers, the device and
``train#trainer#method`` (DDP). Every ``_target_`` is a dotted path into ``scdl_monai``, MONAI or
torch, so a bundle folder runs from any directory with an installed ``scdl_monai``.

**Generator.** The shipped folders are generated from the bundle components, package data
of ``scdl_monai`` (``scdl_monai/resources/bundle_components``, :func:`components_dir`) — the single
source of truth of what is common to every bundle:

* ``train.json`` / ``inference.json`` — complete base configs (native protocol, docs/data.md);
* ``evaluate.json`` / ``multi_gpu_train.json`` — overlays applied on top of ``train.json``;
* ``datasets/<dataset>.json`` — classes and dataset folder (Synapse C=14, AMOS C=16);
* ``backbones/<backbone>.json`` — ``network_def`` (VNet default, MONAI UNet, SegResNet);
* ``protocols/<protocol>/{train,inference}.json`` — the "dhc" / "ga" preprocessing chains;
* ``methods/<method>/{train,inference}.json`` — the algorithm (``method_def``, optimizers,
  schedules, the inference network), ``README.md`` (its training configuration, copied into the
  bundle README) and optional extra overlays (e.g. DHC's Table 3 ablations) copied into the
  bundle's ``configs/``; a method listed in :data:`METHOD_BASES` is composed on top of its base
  method's files (GA-MagicNet = MagicNet + ``methods/ga_magicnet``);
* ``scdl/scdl.json`` (+ ``scdl/network_b.json`` for two-network methods) and ``README.md`` — the
  SCDL plug-in;
* ``logging.conf`` and ``LICENSE``.

A bundle's ``configs/train.json`` is ``train.json + datasets/D + backbones/B [+ protocols/P] +
methods/M/train.json`` merged with MONAI's own rule (``ConfigParser.load_config_files``: a later
file's key replaces, ``+key`` extends/updates, ``a#b`` keys reach into nested sections);
``inference.json`` likewise. Each method has a default preprocessing protocol
(:data:`METHOD_PROTOCOLS`, the one its reference used); ``write`` names a folder
``<method>_<dataset>`` with ``_<backbone>`` / ``_<protocol>`` appended only when they differ from
the defaults. A test keeps the shipped folders equal to the generator's output; users edit their
bundle copies directly and need neither the components nor this module at run time.

Modules: :mod:`~scdl_monai.bundles.catalog` (which methods, datasets, backbones and protocols exist;
bundle names; the components folder), :mod:`~scdl_monai.bundles.compose` (component files ->
configs), :mod:`~scdl_monai.bundles.metadata` (``configs/metadata.json``),
:mod:`~scdl_monai.bundles.descriptions` and :mod:`~scdl_monai.bundles.readme` (the bundle's docs),
:mod:`~scdl_monai.bundles.writer` (bundle folders on disk), :mod:`~scdl_monai.bundles.fidelity` (how
the references infer). The maintainer command line is :mod:`scdl_monai.cli.bundle_tool`::

    python -m scdl_monai.cli.bundle_tool write --method dhc --dataset synapse --out DIR [--backbone unet] [--protocol native]
    python -m scdl_monai.cli.bundle_tool write-all [--out bundles]    # maintainers: regenerate bundles/
    python -m scdl_monai.cli.bundle_tool check [--root bundles]        # shipped bundles == regenerated
"""
from scdl_monai._deprecation import moved_names
from scdl_monai.bundles.catalog import (
    BACKBONES,
    DATASETS,
    DEFAULT_BACKBONE,
    DEFAULT_PROTOCOL,
    METHOD_BASES,
    METHOD_PROTOCOLS,
    METHODS,
    NO_SCDL,
    PROTOCOLS,
    SCDL_METHODS,
    SHIPPED,
    UNSHIPPED_METHODS,
    VARIANTS,
    bundle_name,
    components_dir,
    default_protocol,
    scdl_available,
    schema_path,
)
from scdl_monai.bundles.compose import component_files, compose_config, export_network_id, extra_overlays
from scdl_monai.bundles.metadata import SCHEMA_URL, build_metadata
from scdl_monai.bundles.writer import bake_overlay, compare_bundle_dirs, write_all, write_bundle

__all__ = [
    "METHODS",
    "DATASETS",
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "PROTOCOLS",
    "DEFAULT_PROTOCOL",
    "METHOD_PROTOCOLS",
    "METHOD_BASES",
    "SCDL_METHODS",
    "NO_SCDL",
    "SHIPPED",
    "UNSHIPPED_METHODS",
    "VARIANTS",
    "SCHEMA_URL",
    "components_dir",
    "schema_path",
    "default_protocol",
    "scdl_available",
    "bundle_name",
    "component_files",
    "extra_overlays",
    "compose_config",
    "export_network_id",
    "build_metadata",
    "write_bundle",
    "bake_overlay",
    "write_all",
    "compare_bundle_dirs",
]

# Deprecated: bundles trained before these moved call `scdl_monai.bundles.resume_checkpoint` from train.json.
__getattr__, _moved_dir = moved_names(
    __name__,
    {
        "latest_checkpoint": "scdl_monai.handlers.checkpoint",
        "resume_checkpoint": "scdl_monai.handlers.checkpoint",
        "main": "scdl_monai.cli.bundle_tool",
    },
)
