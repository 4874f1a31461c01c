"""The tiny model configurations every test directory builds from (tests/ is on sys.path under pytest)."""

from __future__ import annotations

from mlip_cli.models import config_class

ELEMENTS = [1, 6, 7, 8, 28, 29, 46, 47, 78, 79]
CUTOFF = 3.5


def tiny_config(family: str, lmax: int = 2, avg_num_neighbors: float = 12.0, **changes) -> dict:
    """8 channels, 2 interactions; ``lmax`` and ``avg_num_neighbors`` only for the families whose config has them."""
    cfg = dict(
        family=family,
        elements=ELEMENTS,
        cutoff=CUTOFF,
        channels=8,
        num_interactions=2,
        num_radial=6,
        radial_hidden=16,
        readout_hidden=8,
    )
    backbone = dict(lmax=lmax, avg_num_neighbors=avg_num_neighbors)
    cfg.update({k: v for k, v in backbone.items() if k in config_class(family).allowed_keys()})
    cfg.update(changes)
    return cfg
