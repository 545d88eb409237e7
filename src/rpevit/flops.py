"""Forward FLOPs per image.

Convention: matrix multiplications count 2 FLOPs per multiply-add, as
``torch.utils.flop_counter`` does (including SDPA); FFTs, which it misses, are added
analytically as ``2.5 n log2 n`` per real transform of ``n`` points and ``5 n log2 n`` per complex
one. Element-wise work (norms, activations, exp, softmax, rotations) is not counted.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _fft_points(shape, dims) -> tuple[int, int]:
    """(points per transform, number of transforms) for an FFT over ``dims`` of ``shape``."""
    points = math.prod(shape[d] for d in dims)
    return points, math.prod(shape) // max(points, 1)


def _fft_flops(per_point: float):
    def count(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
        # Count on the larger of input/output: real side for r2c/c2r, either for c2c.
        shape = input_shape if math.prod(input_shape) >= math.prod(out_shape) else out_shape
        points, transforms = _fft_points(shape, dim)
        return int(per_point * points * math.log2(max(points, 2)) * transforms)

    return count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


CUSTOM_FLOPS = {
    aten._fft_r2c: _fft_flops(2.5),
    aten._fft_c2r: _fft_flops(2.5),
    aten._fft_c2c: _fft_flops(5.0),
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
}


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one image of ``input_shape`` ``(C, H, W)`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    images = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as mode:
            model(images)
    finally:
        model.train(was_training)
    return int(mode.get_total_flops())
