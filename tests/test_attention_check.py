"""Issue 18 case 6: the model's own attention judges tbq's re-implementation, per family and config variant."""

import dataclasses

import pytest
import torch

from turboboa_export.arch import spec_for
from turboboa_export.errors import TbqError
from turboboa_export.pipeline.attention_check import check_attention, check_tokens

COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)


def config(variant: str):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    sliding = dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)  # layer 0 full, layer 1 sliding
    return {
        "llama-gqa2": lambda: LlamaConfig(**COMMON),
        "llama-mha-head_dim16": lambda: LlamaConfig(**{**COMMON, "num_key_value_heads": 4}, head_dim=16),
        "llama-gqa4": lambda: LlamaConfig(**{**COMMON, "num_key_value_heads": 1}),
        "mistral-sliding": lambda: MistralConfig(**COMMON, sliding_window=8),
        "qwen2-sliding": lambda: Qwen2Config(**COMMON, **sliding),
        "qwen3": lambda: Qwen3Config(**COMMON, head_dim=16),
        "qwen3-sliding-gqa4": lambda: Qwen3Config(**{**COMMON, "num_key_value_heads": 1}, head_dim=16, **sliding),
        "gemma3-sliding-scaled": lambda: Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=8,
                                                          layer_types=["sliding_attention", "full_attention"],
                                                          query_pre_attn_scalar=24),
    }[variant]()


def model_and_ids(variant: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config(variant)).eval()
    with torch.no_grad():  # larger q/k weights: scores of order 1, so scaling and masks show in the probabilities
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    ids = torch.randint(0, 64, (1, check_tokens(model.config, 64)), generator=torch.Generator().manual_seed(0))
    return model, ids


@pytest.mark.parametrize("variant", ["llama-gqa2", "llama-mha-head_dim16", "llama-gqa4", "mistral-sliding",
                                     "qwen2-sliding", "qwen3", "qwen3-sliding-gqa4", "gemma3-sliding-scaled"])
def test_statistics_agree_with_the_models_own_attention(variant):
    model, ids = model_and_ids(variant)
    assert ids.shape[1] == 32  # longer than every sliding window (8) by more than 8
    check_attention(model, spec_for(model.config), ids)  # raises on any disagreement
    assert model.config._attn_implementation == "sdpa"  # the model's own implementation is back


@pytest.mark.parametrize("variant,spec_change,layer_type", [
    ("mistral-sliding", {"window": "sliding_window"}, "full_attention"),  # Mistral keeps its window in the config
    ("gemma3-sliding-scaled", {"window": "no_such_attribute"}, "sliding_attention"),
])
def test_a_disagreement_stops_with_one_line_naming_family_and_layer_type(variant, spec_change, layer_type):
    model, ids = model_and_ids(variant)
    spec = dataclasses.replace(spec_for(model.config), **spec_change)
    with pytest.raises(TbqError, match=f"{spec.family} model's own attention on its {layer_type} layers") as e:
        check_attention(model, spec, ids)
    assert "attention probabilities differ" in str(e.value) and "\n" not in str(e.value)


def test_scaling_disagreement_is_found(monkeypatch):
    from turboboa_export.pipeline import attention_stats

    model, ids = model_and_ids("gemma3-sliding-scaled")  # the module scales by 24^-0.5 (query_pre_attn_scalar)
    original = attention_stats.attention_probs
    monkeypatch.setattr(attention_stats, "attention_probs",  # as if tbq took head_dim^-0.5 = 16^-0.5
                        lambda q, k, scaling, window, dtype=torch.float32: original(q, k, 16**-0.5, window, dtype))
    with pytest.raises(TbqError, match="gemma3 model's own attention on its sliding_attention layers"):
        check_attention(model, spec_for(model.config), ids)
