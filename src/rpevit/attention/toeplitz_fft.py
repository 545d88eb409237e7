"""The fft path's engine: block-Toeplitz products by real FFTs in a chunked autograd function."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def fft_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _spectra(weights: Tensor, height: int, width: int, size: tuple[int, int]) -> Tensor:
    """Spectra ``[..., LW/2+1, LH]`` of the convolution kernels ``K[t] = c(-t)`` laid out
    circularly on ``size`` (then ``(C x)_i = sum_j K[i - j] x_j`` is a circular convolution),
    transposed to match :func:`_transform`."""
    flipped = weights.flip(-2, -1)  # flipped[t + H - 1] = c(-t)
    pad = (0, size[1] - (2 * width - 1), 0, size[0] - (2 * height - 1))
    circular = torch.roll(torch.nn.functional.pad(flipped, pad), (1 - height, 1 - width), (-2, -1))
    return torch.fft.rfft2(circular).transpose(-1, -2).contiguous()


def _transform(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-padded 2D real DFT of ``x [c, H, W]`` as ``[c, LW/2+1, LH]``: a real transform
    along the contiguous W axis, then a complex one along H made the last axis."""
    rows = torch.fft.rfft(x, n=size[1], dim=-1).transpose(-1, -2)
    return torch.fft.fft(rows, n=size[0], dim=-1)


def _inverse(spectrum: Tensor, height: int, width: int, size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`_transform`, cropped to the grid: ``[c, LW/2+1, LH] -> [c, H * W]``."""
    rows = torch.fft.ifft(spectrum, dim=-1)[..., :height].transpose(-1, -2)
    return torch.fft.irfft(rows, n=size[1], dim=-1)[..., :width].flatten(-2)


class ToeplitzFFT(torch.autograd.Function):
    """``out[n, e] = sum_a qf[n, a] sum_k mask_k[n] (C_k (kf_a v_e))[n]`` over ``(b, h)`` and
    feature chunks, ``C_k`` the block-Toeplitz matrices of ``weights[k]``, on feature-major
    ``[channel, N]`` layouts (the grid contiguous). No complex tensor outlives a chunk;
    backward re-transforms the inputs instead of saving spectra, and recomputes the forward
    output instead of saving it if that exceeds ``save_bytes``."""

    @staticmethod
    def forward(ctx, qf, kf, v, weights, masks, grid, save_bytes):
        height, width, size, chunk = grid
        batch, heads, n, feats = qf.shape
        spectra = _spectra(weights, height, width, size)  # [nb, h, LW2, LH]
        out = qf.new_empty(batch, heads, v.shape[-1], n)
        keep = any(ctx.needs_input_grad) and out.numel() * feats * out.element_size() <= save_bytes
        saved = qf.new_empty(batch, heads, feats, v.shape[-1], n) if keep else None
        for b in range(batch):
            for h in range(heads):
                q_t, k_t, v_t = qf[b, h].T, kf[b, h].T.contiguous(), v[b, h].T.contiguous()
                acc = out[b, h].zero_()
                for a in range(0, feats, chunk):
                    x = k_t[a : a + chunk, None] * v_t  # [a, e, N]
                    x_hat = _transform(x.view(-1, height, width), size)
                    y = _apply(x_hat, spectra[:, h], masks, h, height, width, size)
                    y = y.view(x.shape)
                    for i in range(y.shape[0]):
                        acc.addcmul_(y[i], q_t[a + i])
                    if keep:
                        saved[b, h, a : a + chunk] = y
        ctx.save_for_backward(qf, kf, v, weights, masks, saved)
        ctx.grid = grid
        return out.transpose(-1, -2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        qf, kf, v, weights, masks, saved = ctx.saved_tensors
        height, width, size, chunk = ctx.grid
        need_q, need_k, need_v, need_w = ctx.needs_input_grad[:4]
        batch, heads, n, feats = qf.shape
        spectra = _spectra(weights, height, width, size)
        grads = [torch.zeros_like(t.transpose(-1, -2)) for t in (qf, kf, v)]  # [.., ch, N]
        corr = spectra.new_zeros(spectra.shape) if need_w else None
        for b in range(batch):
            for h in range(heads):
                q_t, k_t = qf[b, h].T.contiguous(), kf[b, h].T.contiguous()
                v_t, g_t = v[b, h].T.contiguous(), grad[b, h].T.contiguous()
                for a in range(0, feats, chunk):
                    s = slice(a, a + chunk)
                    x_hat = None
                    if need_w or (need_q and saved is None):
                        x_hat = _transform((k_t[s, None] * v_t).view(-1, height, width), size)
                    if need_q:
                        y = saved[b, h, s] if saved is not None else None
                        if y is None:
                            y = _apply(x_hat, spectra[:, h], masks, h, height, width, size)
                            y = y.view(-1, v_t.shape[0], n)
                        grads[0][b, h, s] = (y * g_t).sum(1)
                    if not (need_k or need_v or need_w):
                        continue
                    g_y = (q_t[s, None] * g_t).view(-1, height, width)  # [a * e, H, W]
                    back = 0
                    for k in _active(masks, h, spectra.shape[0]):
                        g_k = g_y if masks is None else g_y * masks[k, h].view(height, width)
                        g_hat = _transform(g_k, size)
                        if need_w:
                            corr[k, h] += (g_hat.conj() * x_hat).sum(0)
                        if need_k or need_v:
                            back = back + g_hat * spectra[k, h].conj()
                    if need_k or need_v:
                        g_x = _inverse(back, height, width, size).view(-1, v_t.shape[0], n)
                        if need_k:
                            grads[1][b, h, s] = (g_x * v_t).sum(1)
                        if need_v:
                            grads[2][b, h] += (g_x * k_t[s, None]).sum(0)
        grad_w = None
        if need_w:
            # corr[k, h] is the spectrum of R(t) = sum_i g_k(i) x(i + t) = dL / dc_k(t).
            full = torch.fft.irfft2(corr.transpose(-1, -2), s=size)
            full = torch.roll(full, (height - 1, width - 1), (-2, -1))
            grad_w = full[..., : 2 * height - 1, : 2 * width - 1].contiguous()
        grad_q, grad_k, grad_v = (
            g.transpose(-1, -2) if need else None
            for g, need in zip(grads, (need_q, need_k, need_v), strict=True)
        )
        return grad_q, grad_k, grad_v, grad_w, None, None, None


def _apply(x_hat, spectra, masks, head, height, width, size) -> Tensor:
    """``sum_k mask_k * IFFT(x_hat * spectra[k])`` for one head: ``[c, N]``."""
    if masks is None:
        return _inverse(x_hat * spectra[0], height, width, size)
    out = 0
    for k in _active(masks, head, spectra.shape[0]):
        out = out + masks[k, head] * _inverse(x_hat * spectra[k], height, width, size)
    return out


def _active(masks: Tensor | None, head: int, bands: int) -> list[int]:
    """The bands holding at least one row of ``head``."""
    if masks is None:
        return list(range(bands))
    return [k for k in range(bands) if masks[k, head].any()]
