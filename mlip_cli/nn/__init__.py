"""Neural-network building blocks of the mlip models (features ``[N, C, (L+1)^2]``, irreps last).

Radial basis and smooth cutoff (:mod:`.radial`), element embedding (:mod:`.embedding`), equivariant
linear maps and the gate (:mod:`.equivariant`), the edge convolution with a pluggable tensor product
(:mod:`.conv`), the interaction block (:mod:`.interaction`) and the energy readout (:mod:`.readout`).
"""

from .conv import TP_KINDS, EdgeConvolution
from .embedding import ElementEmbedding, ElementTable
from .equivariant import ElementLinear, EquivariantLinear, Gate
from .interaction import InteractionBlock
from .radial import BesselBasis, PolynomialEnvelope, RadialMLP
from .readout import AtomicReference, ScalarReadout, ScaleShift

__all__ = [
    "TP_KINDS",
    "AtomicReference",
    "BesselBasis",
    "EdgeConvolution",
    "ElementEmbedding",
    "ElementLinear",
    "ElementTable",
    "EquivariantLinear",
    "Gate",
    "InteractionBlock",
    "PolynomialEnvelope",
    "RadialMLP",
    "ScalarReadout",
    "ScaleShift",
]
