"""Architectures as data: where the decoder blocks, linears, norms and rotary embedding are.

Nothing else in tbq branches on the model type: it asks the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import TbqError

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
FUSED_ROLES = (("q", "k", "v"), ("gate", "up"))  # vLLM serves each as one layer (qkv_proj, gate_up_proj): one scheme


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one decoder-only family (relative to the model, or to a block for block parts)."""

    family: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    rotary: str = "model.rotary_emb"
    lm_head: str = "lm_head"
    attn: str = "self_attn"
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    input_norm: str = "input_layernorm"
    post_attn_norm: str = "post_attention_layernorm"
    q_norm: str | None = None
    k_norm: str | None = None
    window: str = "sliding_window"  # where the attention module keeps its sliding window (absent or None: full)
    half_dtype: str = "float16"  # what a float32 checkpoint is exported and served in (bfloat16 where fp16 is unsafe)

    def linears(self) -> dict[str, str]:
        """Role -> path inside a block, in execution order."""
        return {role: getattr(self, role) for role in ROLES}


LLAMA = ArchSpec("llama", ("llama",))
MISTRAL = ArchSpec("mistral", ("mistral",), window="config.sliding_window")  # one window for every layer
QWEN2 = ArchSpec("qwen2", ("qwen2",))
QWEN3 = ArchSpec("qwen3", ("qwen3",), q_norm="self_attn.q_norm", k_norm="self_attn.k_norm")
GEMMA3 = ArchSpec("gemma3", ("gemma3_text",), q_norm="self_attn.q_norm", k_norm="self_attn.k_norm",
                 half_dtype="bfloat16")

REGISTRY: dict[str, ArchSpec] = {mt: spec for spec in (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA3) for mt in spec.model_types}


def spec_for(config) -> ArchSpec:
    """The spec of a transformers config, or a one-line error listing the supported model types."""
    model_type = getattr(config, "model_type", None)
    if model_type not in REGISTRY:
        raise TbqError(
            f"unsupported architecture {model_type!r}; supported model types: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[model_type]


def attribute(root: object, path: str) -> object:
    """``root.a.b`` for path ``a.b``; None where a part is missing."""
    for part in path.split("."):
        root = getattr(root, part, None)
    return root


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b.c`` for path ``a.b.c``."""
    return root.get_submodule(path)


@dataclass(frozen=True)
class AttentionShape:
    """Head counts of a model."""

    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def attention_shape(config) -> AttentionShape:
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return AttentionShape(heads, kv, head_dim)
