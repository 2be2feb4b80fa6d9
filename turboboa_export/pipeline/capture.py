"""Capturing the first block's inputs and each block's call arguments, and running one block.

The decoder blocks are swapped for recorders that store what the model passes them (per block: masks and
rotary embeddings differ between layer types, e.g. Gemma 3's sliding layers) and return their input, and the
last one stops the forward: only the embeddings run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

DROPPED_KWARGS = ("past_key_values", "past_key_value", "use_cache", "output_attentions", "cache_position")


class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    def __init__(self, index: int, last: bool, sink: "Captured"):
        super().__init__()
        self.index, self.last, self.sink = index, last, sink

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self.sink.inputs.append(hidden_states[0].detach())
        if self.index not in self.sink.kwargs:
            self.sink.kwargs[self.index] = {k: v for k, v in kwargs.items() if k not in DROPPED_KWARGS}
        if self.last:
            raise _Stop
        return hidden_states


@dataclass
class Captured:
    """Block-0 inputs ([nsamples] tensors of [seqlen, hidden]) and per-block keyword arguments."""

    inputs: list
    kwargs: dict


def to_device(obj, device: torch.device):
    """Tensors inside nested tuples, lists and dicts, moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_inputs(model: nn.Module, layers: nn.ModuleList, batch: torch.Tensor) -> Captured:
    """Run the model's embeddings on each calibration window ([nsamples, seqlen] ids) and record block inputs."""
    sink = Captured([], {})
    originals = list(layers)
    n = len(originals)
    for i in range(n):
        layers[i] = _Recorder(i, i == n - 1, sink)
    try:
        for ids in batch:
            try:
                model(input_ids=ids[None], use_cache=False)
            except _Stop:
                pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    return sink


def run_block(block: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """One block on one sequence [seqlen, hidden] -> [seqlen, hidden]."""
    out = block(x[None], use_cache=False, **kwargs)
    if isinstance(out, tuple):
        out = out[0]
    return out[0]
