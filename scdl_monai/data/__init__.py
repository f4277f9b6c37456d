"""Data layer: dataset definitions, datalists, integrity checks, transforms, phantom."""
