"""Before calibrating, the model's own attention judges tbq's re-implementation of it.

tbq's attention statistics compute post-RoPE queries and keys and causal (optionally windowed) softmax
probabilities from the attention module's weights and a few attributes the architecture spec names (scaling,
sliding window, q/k norms). A family or config variant that keeps one of these elsewhere would make the statistics
silently wrong, so on a short sequence, for the first layer of every layer type (sliding and full), both are run:
the model through its own eager attention function (with its own masks, scaling and RoPE), observed by a probe
registered as a transformers attention implementation, and tbq's ``AttentionStatistics``. Any difference stops
the run with one line naming the family and the layer type.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import torch

from ..arch import ArchSpec, attention_shape
from ..errors import TbqError
from .attention_stats import AttentionStatistics
from .capture import capture_inputs

PROBE = "tbq_attention_probe"
MIN_TOKENS = 32  # at least this many tokens, and a sliding window plus 8, so that windows show
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # half-precision models: HALF_TOLERANCE
HALF_TOLERANCE = 2e-2
_SEEN: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(attention module) -> (query, key) the probe saw


def _probe(module, query, key, value, attention_mask, **kwargs):
    """The family's own eager attention, recording the post-RoPE query and key it is given."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise TbqError(f"{type(module).__name__} has no eager attention to check tbq's statistics against; "
                       "this architecture is not supported")
    _SEEN[id(module)] = (query.detach(), key.detach())
    return eager(module, query, key, value, attention_mask, **kwargs)


@contextmanager
def probed(model) -> Iterator[None]:
    """The model runs its eager attention (and eager masks) through the probe; its own implementation after."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(PROBE, _probe)
    AttentionMaskInterface.register(PROBE, eager_mask)
    before = model.config._attn_implementation
    model.set_attn_implementation(PROBE)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
        _SEEN.clear()


def layer_types(config, n: int) -> list[str]:
    """Each layer's attention type (``sliding_attention`` / ``full_attention``); all ``full_attention`` when the
    config has no ``layer_types``."""
    return list(getattr(config, "layer_types", None) or ["full_attention"] * n)


def checked_layers(config, n: int) -> list[int]:
    """The layers the check runs: the first of each attention type, in order."""
    types = layer_types(config, n)
    return [types.index(t) for t in dict.fromkeys(types)]


def check_tokens(config, seqlen: int) -> int:
    """The length of the check sequence: MIN_TOKENS, longer than a sliding window, at most ``seqlen``."""
    window = getattr(config, "sliding_window", None) or 0
    return min(seqlen, max(MIN_TOKENS, window + 8))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@torch.no_grad()
def check_attention(model, spec: ArchSpec, ids: torch.Tensor) -> None:
    """Compare tbq's post-RoPE queries and keys and attention probabilities with the model's own, for the first
    layer of each layer type (:func:`checked_layers`; their weights and the embedding's loaded), on token ids
    [1, L] (model on the CPU or any one device).

    Raises TbqError naming the family, layer type and what differs (queries, keys or probabilities) when the
    largest difference, relative to the largest value (absolute for probabilities), exceeds the tolerance of the
    model's dtype.
    """
    shape = attention_shape(model.config)
    layers = model.get_submodule(spec.layers)
    types = layer_types(model.config, len(layers))
    tol = TOLERANCE.get(model.dtype, HALF_TOLERANCE)
    with probed(model):
        cap = capture_inputs(model, layers, ids)
        for i in checked_layers(model.config, len(layers)):
            layer_type = types[i]
            block = layers[i]
            attn = block.get_submodule(spec.attn)
            x = block.get_submodule(spec.input_norm)(cap.inputs[0])
            kwargs = cap.kwargs[i]
            q, k, probs = AttentionStatistics(attn, spec, shape, with_r=False).probabilities(x, kwargs)
            _, weights = attn(x[None], **{key: v for key, v in kwargs.items() if key != "position_ids"})
            query, key = _SEEN.pop(id(attn))
            diffs = {"post-RoPE queries": _relative(q, query[0]), "post-RoPE keys": _relative(k, key[0]),
                     "attention probabilities": float((probs.double() - weights[0].double()).abs().max())}
            bad = {what: d for what, d in diffs.items() if not d <= tol}
            if bad:
                what, d = next(iter(bad.items()))
                raise TbqError(
                    f"tbq's attention statistics disagree with the {spec.family} model's own attention on its "
                    f"{layer_type} layers (layer {i}): {what} differ by {d:.3g} (tolerance {tol:g}); this "
                    f"{spec.family} variant is not supported, please report it with the model's config.json"
                )
