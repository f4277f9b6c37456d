"""Command-line entry points of the package, one module per command (each a thin layer over the library).

* ``python -m scdl_monai.cli.demo`` — download-free demo: train, segment and score the DHC bundle on the shipped CT samples;
* ``python -m scdl_monai.cli.inference`` — segment any CT (NIfTI file or DICOM folder) with a bundle, back in its original space;
* ``python -m scdl_monai.cli.bundle_tool`` — maintainers: write a bundle, regenerate the shipped ones, check them.

The dataset and evaluation commands are their packages' own: ``python -m scdl_monai.data`` and
``python -m scdl_monai.evaluation``.
"""
