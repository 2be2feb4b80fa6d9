"""Where the calibration activations (both streams' block inputs, [seqlen, hidden] per sequence) live: on the
accelerator when both streams fit in half of its free memory (the other half for the block, its statistics and
the algorithms), else in pinned host memory, each sequence copied over for its turn and its output copied back."""

from __future__ import annotations

import torch

STREAMS = 2  # full-precision and quantized


def activation_home(device: torch.device, inputs: list[torch.Tensor]) -> torch.device:
    """``device``, or the CPU when ``device`` is a GPU on which two streams of ``inputs`` do not fit."""
    if device.type != "cuda":
        return device
    need = STREAMS * sum(x.numel() * x.element_size() for x in inputs)
    free, _ = torch.cuda.mem_get_info(device)
    return device if need <= free // 2 else torch.device("cpu")


def keep(x: torch.Tensor, home: torch.device) -> torch.Tensor:
    """``x`` stored at ``home``; a GPU result kept in host memory goes to pinned memory (fast copies back)."""
    if x.device == home:
        return x
    if x.is_cuda and home.type == "cpu":
        return torch.empty(x.shape, dtype=x.dtype, pin_memory=True).copy_(x)
    return x.to(home)
