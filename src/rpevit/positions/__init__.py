"""Position encodings: how geometry enters attention (DESIGN.md section 4)."""

from rpevit.positions.base import AbsoluteOnly, PositionEncoding, TokenGrid
from rpevit.positions.frpe import FourierRPE
from rpevit.positions.rope import Rope2D
from rpevit.positions.rpe import KernelizedRPE
from rpevit.positions.string import CirculantString

__all__ = [
    "AbsoluteOnly",
    "CirculantString",
    "FourierRPE",
    "KernelizedRPE",
    "PositionEncoding",
    "Rope2D",
    "TokenGrid",
]
