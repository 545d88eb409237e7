"""Linear attention re-weighted by a Fourier relative weight, in O(N) (DESIGN.md section 4).

The weight between patch tokens at coordinates ``r_i``, ``r_j`` is, per head,
``f(r_j - r_i)`` with ``f(D) = a_0 + sum_r a_r cos(w_r . D + s_r)`` and
``a_0 = sum_r |a_r| + softplus(beta)``, so ``f >= softplus(beta) > 0``. The identity
``cos(w.(r_j - r_i) + s) = cos(w.r_i) cos(w.r_j + s) + sin(w.r_i) sin(w.r_j + s)`` factorises
the weight matrix exactly, ``C = U W^T`` of rank ``2R + 1`` (:func:`fourier_factors`), and masked
linear attention becomes plain linear attention on the features ``phi(q_i) (x) U_i`` and
``phi(k_j) (x) W_j`` (:func:`fourier_linear_attention`): O(N m R d), never an N x N tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rpevit.attention.functional import DENOMINATOR_EPS


def fourier_constant(amplitudes: Tensor, beta: Tensor) -> Tensor:
    """The constant term ``a_0 = sum_r |a_r| + softplus(beta)`` per head ``[h]``."""
    return amplitudes.abs().sum(-1) + F.softplus(beta)


def fourier_weight(
    offsets: Tensor, frequencies: Tensor, phases: Tensor, amplitudes: Tensor, beta: Tensor
) -> Tensor:
    """``f(D)`` per head, ``[h, *offsets.shape[:-1]]``, at (row, col) offsets ``[..., 2]``;
    parameters: frequencies ``[h, R, 2]``, phases and amplitudes ``[h, R]``, beta ``[h]``."""
    flat = offsets.reshape(-1, 2)
    angle = flat @ frequencies.transpose(-1, -2) + phases[:, None]  # [h, K, R]
    f = fourier_constant(amplitudes, beta)[:, None] + (amplitudes[:, None] * angle.cos()).sum(-1)
    return f.reshape(-1, *offsets.shape[:-1])


def fourier_factors(
    coords: Tensor, frequencies: Tensor, phases: Tensor, amplitudes: Tensor, beta: Tensor
) -> tuple[Tensor, Tensor]:
    """Exact factors ``U, W`` ``[h, N, 2R + 1]`` of ``C[i, j] = f(r_j - r_i) = U_i . W_j`` for
    patch coordinates ``[N, 2]``: ``U_i = [1, cos(w.r_i), sin(w.r_i)]``,
    ``W_j = [a_0, a cos(w.r_j + s), a sin(w.r_j + s)]``."""
    heads, _ = phases.shape
    angle = coords @ frequencies.transpose(-1, -2)  # [h, N, R]
    shifted = angle + phases[:, None]
    a = amplitudes[:, None]
    constant = fourier_constant(amplitudes, beta)[:, None, None].expand(heads, len(coords), 1)
    u = torch.cat([torch.ones_like(constant), angle.cos(), angle.sin()], dim=-1)
    w = torch.cat([constant, a * shifted.cos(), a * shifted.sin()], dim=-1)
    return u, w


def fourier_linear_attention(
    q_features: Tensor,
    k_features: Tensor,
    v: Tensor,
    coords: Tensor,
    frequencies: Tensor,
    phases: Tensor,
    amplitudes: Tensor,
    beta: Tensor,
    num_prefix: int,
) -> Tensor:
    """Linear attention with weights ``c_ij = f(r_j - r_i)`` between patch tokens and ``c = 1``
    to and from the ``num_prefix`` leading (CLS) tokens.

    ``q_features``/``k_features``: ``[B, h, P+N, m]`` (non-negative), ``v``: ``[B, h, P+N, d]``,
    ``coords``: patch coordinates ``[N, 2]``. With ``X_j = [v_j, 1]``, the contexts
    ``S_rho = sum_j W_j,rho phi(k_j) X_j^T`` give ``out_i = sum_rho U_i,rho phi(q_i)^T S_rho``:
    O(N m (2R+1) d) time, O(N (2R+1) d) extra memory. Prefix keys enter with
    ``W = [1, 0, ..., 0]`` (weight ``U_i . W = 1``); prefix queries' rows are computed
    explicitly, O(P N (m + d)). Sums run in float32 (float64 if given).

    Denominator guard: ``block 0 = phi(q_i)^T S_0 = a_0 D_i + E_i`` (``D_i``: plain sum over
    patch keys, ``E_i`` over prefix keys) and every weight is at least ``l = min(softplus(beta),
    1)`` (``f >= softplus(beta)``, prefix weights 1), so the true denominator is at least
    ``l / a_0 * block 0 > 0``. A computed denominator below half that bound (only possible
    through cancellation in the cosine terms) is replaced by the detached bound, so it never
    reaches 0 or below; above it, the computed value and its exact gradient are kept.
    """
    prefix = num_prefix
    if q_features.shape[-2] != coords.shape[0] + prefix:
        raise ValueError(
            f"token count {q_features.shape[-2]} does not match {coords.shape[0]} patch "
            f"coordinates plus {prefix} prefix tokens"
        )
    with torch.autocast(device_type=v.device.type, enabled=False):
        dtype = q_features.dtype
        params = [p.to(dtype) for p in (frequencies, phases, amplitudes, beta)]
        u, w = fourier_factors(coords.to(dtype), *params)  # [h, N, rho]
        rank = u.shape[-1]
        if prefix:  # prefix keys: W = [1, 0, ...]; prefix queries: U = 0, rows added below
            w = torch.cat([F.pad(w.new_ones(w.shape[0], prefix, 1), (0, rank - 1)), w], dim=1)
            u = F.pad(u, (0, 0, prefix, 0))
        x = F.pad(v.to(dtype), (0, 1), value=1.0)  # [v_j, 1]: the last column sums weights
        e = x.shape[-1]
        weighted = (w[..., None] * x[..., None, :]).flatten(-2)  # [B, h, P+N, rho * e]
        context = k_features.transpose(-1, -2) @ weighted  # [B, h, m, rho * e]
        blocks = (q_features @ context).unflatten(-1, (rank, e))  # [B, h, P+N, rho, e]
        out = (blocks * u[..., None]).sum(-2)
        if prefix:  # weight 1 to every key: the P x (P+N) scores, then their weighted sum
            scores = q_features[:, :, :prefix] @ k_features.transpose(-1, -2)
            out = out + F.pad(scores @ x, (0, 0, 0, coords.shape[0]))
        with torch.no_grad():  # every weight is >= min(softplus(beta), 1): see the docstring
            low = F.softplus(params[3]).clamp_max(1.0)
            floor = (low / fourier_constant(params[2], params[3]))[:, None, None]
            floor = floor * blocks[..., 0, -1:]
        # Only a clear numerical failure (computed below half the bound) takes the detached
        # bound: at initialisation the bound is tight, and switching on rounding noise there
        # would cut the denominator's gradient in about half of the rows.
        denominator = torch.where(out[..., -1:] >= 0.5 * floor, out[..., -1:], floor)
        return (out[..., :-1] / denominator.clamp_min(DENOMINATOR_EPS)).to(v.dtype)
