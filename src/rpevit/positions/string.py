"""Circulant-STRING (Schenck et al. 2025): ``R(r) = exp(row L_row + col L_col)`` with
``L_a = C_a - C_a^T`` and ``C_a`` circulant with learnable first column ``c_a`` (per head).

Circulant matrices commute, so ``R(a)^T R(b) = R(b - a)``: exact translation invariance, R
orthogonal. The DFT diagonalises every ``L_a`` with purely imaginary eigenvalues
``FFT(c_a) - conj(FFT(c_a)) = 2i Im FFT(c_a)``, so ``R(r) z = IRFFT(exp(i phase(r)) RFFT(z))``:
O(d log d) per token, no d x d matrix. It is RoPE in a DFT basis with learnable frequencies;
``c_a`` is initialised to an axial-RoPE-like spectrum (base 100, row and column on alternate
DFT bins) rather than to the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rpevit.positions.base import PositionEncoding, TokenGrid, apply_to_patches


def circulant_generator(first_column: Tensor) -> Tensor:
    """Dense skew-symmetric generator ``C - C^T`` for a circulant ``C`` (reference for tests)."""
    d = first_column.shape[-1]
    idx = (torch.arange(d)[:, None] - torch.arange(d)[None, :]) % d
    circulant = first_column[..., idx]
    return circulant - circulant.transpose(-1, -2)


def string_phases(first_column: Tensor) -> Tensor:
    """Rotation angle per rFFT bin, ``2 Im FFT(c)[: d/2 + 1]``; bins 0 and d/2 are always 0."""
    dtype = torch.float64 if first_column.dtype == torch.float64 else torch.float32
    return 2 * torch.fft.rfft(first_column.to(dtype), dim=-1).imag


def string_rotate(x: Tensor, coords: Tensor, c_row: Tensor, c_col: Tensor) -> Tensor:
    """``R(r_n) x_n`` for ``x[..., N, d]``, coords ``[N, 2]``, generators ``[heads or 1, d]``."""
    d = x.shape[-1]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    coords = coords.to(dtype)
    phase = (
        coords[:, 0, None] * string_phases(c_row.to(dtype))[..., None, :]
        + coords[:, 1, None] * string_phases(c_col.to(dtype))[..., None, :]
    )  # [heads, N, d/2 + 1]
    with torch.autocast(device_type=x.device.type, enabled=False):
        spectrum = torch.fft.rfft(x.to(dtype), dim=-1)
        rotated = torch.fft.irfft(spectrum * torch.polar(torch.ones_like(phase), phase), n=d)
    return rotated.to(x.dtype)


def rope_like_columns(head_dim: int, heads: int, base: float = 100.0) -> tuple[Tensor, Tensor]:
    """First columns whose spectra put geometric frequencies on alternate DFT bins per axis."""
    bins = torch.arange(1, head_dim // 2 + (head_dim % 2))  # the rotation planes
    row_bins, col_bins = bins[0::2], bins[1::2]
    columns = []
    for axis_bins in (row_bins, col_bins):
        count = max(len(axis_bins), 1)
        theta = base ** (-torch.arange(len(axis_bins), dtype=torch.float64) / count)
        spectrum = torch.zeros(head_dim // 2 + 1, dtype=torch.complex128)
        spectrum[axis_bins] = 0.5j * theta  # 2 Im FFT(c) = theta on those bins
        columns.append(torch.fft.irfft(spectrum, n=head_dim).float().expand(heads, -1).clone())
    return columns[0], columns[1]


class CirculantString(PositionEncoding):
    """Per-head circulant STRING rotation of patch-token q and k, before the kernel."""

    def __init__(self, head_dim: int, heads: int, base: float = 100.0) -> None:
        super().__init__()
        if head_dim < 4:
            raise ValueError(f"Circulant-STRING needs a head dimension >= 4, got {head_dim}")
        c_row, c_col = rope_like_columns(head_dim, heads, base)
        self.c_row = nn.Parameter(c_row)
        self.c_col = nn.Parameter(c_col)

    def rotate(self, q: Tensor, k: Tensor, grid: TokenGrid) -> tuple[Tensor, Tensor]:
        coords = grid.coords(q.device)

        def fn(x: Tensor) -> Tensor:
            return string_rotate(x, coords, self.c_row, self.c_col)

        return apply_to_patches(q, grid.num_prefix, fn), apply_to_patches(k, grid.num_prefix, fn)
