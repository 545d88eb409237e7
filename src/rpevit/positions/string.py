"""Circulant-STRING (Schenck et al. 2025): ``R(r) = exp(row L_row + col L_col)`` with
``L_a = C_a - C_a^T`` and ``C_a`` circulant with first column ``c_a`` (per head).

Circulant matrices commute, so ``R(a)^T R(b) = R(b - a)``: exact translation invariance between
rotated tokens, R orthogonal. The DFT diagonalises every ``L_a``, with purely imaginary
eigenvalues ``i phi_a``, ``phi_a = 2 Im FFT(c_a)``: only the odd part of ``c_a`` acts, and
``phi_a`` vanishes on the DC (and, d even, Nyquist) bin. So the learnable parameters are the
angles themselves, ``ceil(d/2) - 1`` per axis and head on the other rFFT bins (a dense ``c_a``
would carry ``d - ceil(d/2) + 1`` entries with zero gradient), and
``R(r) z = IRFFT(exp(i (row phi_row + col phi_col)) RFFT(z))``: O(d log d) per token, no d x d
matrix, no FFT of the parameters. It is RoPE in a DFT basis with learnable frequencies,
initialised to an axial-RoPE-like spectrum (base 100, row and column on alternate bins).
Checkpoints that store first columns (``c_row``, ``c_col``) load through an exact conversion.

Only patch tokens are rotated, so a common shift of all patch coordinates leaves the
patch-to-patch logits unchanged but not CLS-to-patch or patch-to-CLS ones (DESIGN.md sec. 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rpevit.attention.functional import compute_dtype
from rpevit.positions.base import PositionEncoding, TokenGrid, apply_to_patches


def num_angles(head_dim: int) -> int:
    """Rotation planes of a circulant generator: rFFT bins other than DC and Nyquist."""
    return (head_dim - 1) // 2


def circulant_generator(first_column: Tensor) -> Tensor:
    """Dense skew-symmetric generator ``C - C^T`` for a circulant ``C`` (reference for tests)."""
    d = first_column.shape[-1]
    idx = (torch.arange(d)[:, None] - torch.arange(d)[None, :]) % d
    circulant = first_column[..., idx]
    return circulant - circulant.transpose(-1, -2)


def angles_to_first_column(angles: Tensor, head_dim: int) -> Tensor:
    """The odd first column ``c`` with ``2 Im FFT(c) = angles`` on bins ``1..len``, 0 elsewhere,
    so that ``circulant_generator(c)`` is the dense generator of these angles."""
    spectrum = torch.zeros(*angles.shape[:-1], head_dim // 2 + 1, dtype=angles.dtype)
    spectrum[..., 1 : angles.shape[-1] + 1] = angles
    return torch.fft.irfft(torch.complex(torch.zeros_like(spectrum), 0.5 * spectrum), n=head_dim)


def first_column_to_angles(first_column: Tensor) -> Tensor:
    """The angles ``2 Im FFT(c)`` on bins ``1..ceil(d/2)-1`` that the first column ``c`` acts with
    (the same float operations as the former first-column forward pass: outputs are identical)."""
    d = first_column.shape[-1]
    dtype = compute_dtype(first_column)
    return (2 * torch.fft.rfft(first_column.to(dtype), dim=-1).imag)[..., 1 : num_angles(d) + 1]


def string_rotor(coords: Tensor, freq_row: Tensor, freq_col: Tensor, head_dim: int) -> Tensor:
    """``exp(i phase)`` per token and rFFT bin, ``[heads or 1, N, d/2 + 1]``, for coords ``[N, 2]``
    and angles ``[heads or 1, ceil(d/2) - 1]`` per unit step; 1 on the DC and Nyquist bins."""
    phase = coords[:, :1] * freq_row[..., None, :] + coords[:, 1:] * freq_col[..., None, :]
    phase = F.pad(phase, (1, head_dim // 2 - freq_row.shape[-1]))
    return torch.polar(torch.ones_like(phase), phase)


def string_rotate(x: Tensor, rotor: Tensor) -> Tensor:
    """``R(r_n) x_n`` for ``x[..., N, d]`` given the rotor of :func:`string_rotor`."""
    dtype = compute_dtype(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        rotated = torch.fft.irfft(torch.fft.rfft(x.to(dtype), dim=-1) * rotor, n=x.shape[-1])
    return rotated.to(x.dtype)


def rope_like_angles(head_dim: int, heads: int, base: float = 100.0) -> tuple[Tensor, Tensor]:
    """Row and column angles ``[heads, ceil(d/2) - 1]``: geometric frequencies ``base^(-t/T)`` on
    alternate rFFT bins (odd-numbered bins for rows, even-numbered for columns), 0 elsewhere."""
    angles = []
    for axis in (0, 1):
        bins = torch.arange(axis, num_angles(head_dim), 2)
        values = torch.zeros(num_angles(head_dim), dtype=torch.float64)
        values[bins] = base ** (-torch.arange(len(bins), dtype=torch.float64) / max(len(bins), 1))
        angles.append(values.float().expand(heads, -1).clone())
    return angles[0], angles[1]


def _load_first_columns(module, state_dict, prefix, *args) -> None:
    """Convert a former checkpoint's ``c_row``/``c_col`` ``[h, d]`` to the angles they act with."""
    for axis in ("row", "col"):
        old = state_dict.pop(f"{prefix}c_{axis}", None)
        if old is not None:
            state_dict[f"{prefix}freq_{axis}"] = first_column_to_angles(old)


class CirculantString(PositionEncoding):
    """Per-head circulant STRING rotation of patch-token q and k, before the kernel; learnable
    ``freq_row``, ``freq_col`` ``[heads, ceil(d/2) - 1]``, the generators' eigen-angles."""

    def __init__(self, head_dim: int, heads: int, base: float = 100.0) -> None:
        super().__init__()
        if head_dim < 4:
            raise ValueError(f"Circulant-STRING needs a head dimension >= 4, got {head_dim}")
        self.head_dim = head_dim
        freq_row, freq_col = rope_like_angles(head_dim, heads, base)
        self.freq_row = nn.Parameter(freq_row)
        self.freq_col = nn.Parameter(freq_col)
        self.register_load_state_dict_pre_hook(_load_first_columns)

    def rotor(self, grid: TokenGrid, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``exp(i phase)`` ``[heads, N, d/2 + 1]`` of the patch tokens of ``grid``."""
        return string_rotor(
            grid.coords(device, dtype), self.freq_row.to(dtype), self.freq_col.to(dtype),
            self.head_dim,
        )  # fmt: skip

    def rotate(self, q: Tensor, k: Tensor, grid: TokenGrid) -> tuple[Tensor, Tensor]:
        dtype = compute_dtype(q)
        rotor = self.rotor(grid, q.device, dtype)  # once for q and k

        def fn(x: Tensor) -> Tensor:
            return string_rotate(x, rotor)

        return apply_to_patches(q, grid.num_prefix, fn), apply_to_patches(k, grid.num_prefix, fn)
