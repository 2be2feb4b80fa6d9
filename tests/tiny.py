"""Tiny random models and text built in code (no hub): Llama, Mistral (sliding window), Qwen2 (q/k/v biases),
Qwen3 (q/k norms), Gemma 3 (sliding layers)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = ("the of and to in is was for on as with by at from his her an which that it were are be this had "
         "river city music war king north early film team year game league born school album first new").split()


def sample_text(n_words: int = 6000, seed: int = 0) -> str:
    rng = random.Random(seed)
    sentences = []
    while n_words > 0:
        k = rng.randint(5, 14)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + ".")
        n_words -= k
    return " ".join(sentences)


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator([sample_text(3000, 1)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_config(kind: str, vocab: int):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
    if kind == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if kind == "mistral":
        return MistralConfig(**common, sliding_window=16, tie_word_embeddings=False)
    if kind == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if kind == "qwen3":
        return Qwen3Config(**common, tie_word_embeddings=True)
    if kind == "gemma3":
        return Gemma3TextConfig(**common, sliding_window=16, layer_types=["sliding_attention", "full_attention",
                                "sliding_attention"], query_pre_attn_scalar=16)
    raise ValueError(kind)


def make_model_dir(root: Path, kind: str = "llama", seed: int = 0) -> Path:
    """A saved tiny random model with a tokenizer, in float32."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_config(tiny_config(kind, len(tok)), dtype=torch.float32)
    path = Path(root) / f"tiny-{kind}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_text(root: Path) -> Path:
    path = Path(root) / "calib.txt"
    path.write_text(sample_text())
    return path
