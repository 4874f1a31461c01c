"""Tensor-product math and kernels for mlip (pure torch; optional Triton in ``mlip_kernels.triton``).

Conventions: real component-normalised spherical harmonics in e3nn's basis, features ``[..., C, d]`` with
``d = (L+1)^2`` (irreps last, blocks ``l = 0..L``, ``m = -l..l``). See ``sh.py`` and ``wigner.py``.
"""

from .cg import cg_tensor_product, shared_cg_tensor, tp_paths
from .sh import irreps_dim, spherical_harmonics
from .tp import LowRankTP, lowrank_product, make_tp
from .wigner import clebsch_gordan, gaunt_coefficients, random_rotation, wigner_3j, wigner_D, wigner_D_blocks

__all__ = [
    "LowRankTP",
    "cg_tensor_product",
    "clebsch_gordan",
    "gaunt_coefficients",
    "irreps_dim",
    "lowrank_product",
    "make_tp",
    "random_rotation",
    "shared_cg_tensor",
    "spherical_harmonics",
    "tp_paths",
    "wigner_3j",
    "wigner_D",
    "wigner_D_blocks",
]
