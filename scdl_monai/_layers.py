"""The layers of the package, lowest first: the architecture as data (docs/architecture.md).

data makes tensors -> networks turn tensors into tensors -> losses / weighting turn tensors into
scalars and class weights -> methods say what one training step of an algorithm is -> engines run
steps inside MONAI's Workflow (with the precision policy, start-up checks and evaluation) and
handlers say when things happen -> bundles say which pieces are used, and the command lines run them.

A module may import from its own layer and the layers below it, never from a layer above
(``tests/test_layers.py`` checks every import, including those inside functions). The top-level
modules that are not listed (``scdl_monai.precision``, ``scdl_monai.inference``, ...) are the
deprecated aliases of earlier module paths: they belong to no layer and nothing may import them.
"""

from __future__ import annotations

__all__ = ["LAYERS", "layer_of"]

#: Subpackages (and private top-level modules) per layer, lowest first.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_layers", "_deprecation"),  # standard library only
    ("data",),
    ("networks",),
    ("losses", "weighting"),
    ("methods",),
    ("engines", "handlers", "evaluation"),
    ("bundles", "cli"),
)


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of a dotted ``scdl_monai`` module, or None outside the layers.

    Example:
        >>> layer_of("scdl_monai.methods.dhc"), layer_of("scdl_monai.precision")
        (4, None)
    """
    parts = module.split(".")
    if parts[0] != "scdl_monai" or len(parts) < 2:
        return None
    return next((i for i, names in enumerate(LAYERS) if parts[1] in names), None)
