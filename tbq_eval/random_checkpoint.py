"""Random-weight checkpoints of real model shapes, for throughput runs (speed does not depend on the values).

    python -m tbq_eval.random_checkpoint llama2-7b -o DIR [--format fp16|vllm|w8a8] [--bits 4] [--group-size 128]
                                     [--asym] [--layers N] [--seed 0] [--online-rotation full|block:B]
                                     [--act-bits 4|8] [--dtype float16|bfloat16]

``fp16``: a dense Hugging Face checkpoint (in ``--dtype``; written shard by shard, so an 8B or 70B one needs no more
memory than one 4 GB shard). ``vllm``: random integer codes, scales and zeros written by the same
code as ``tbq export --format vllm`` (compressed-tensors pack-quantized); ``--online-rotation`` adds the online
down_proj Hadamard of a ``--rotate hadamard`` export (the weights stay random), ``--act-bits`` makes it W4A4/W4A8
(served by tbq's plugin). ``w8a8``: stock vLLM's W8A8-int8 (compressed-tensors ``int-quantized``: int8 per-channel
weights, dynamic per-token int8 activations, CUTLASS). No tokenizer: feed token ids.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from turboboa_export.algorithms.grid import GridSpec
from turboboa_export.algorithms.quantized import QuantizedWeight, contiguous_g_idx
from turboboa_export.arch import spec_for
from turboboa_export.errors import TbqError
from turboboa_export.export.compressed_tensors import (down_transform, save_sharded, write_atomically,
                                                      write_vllm_checkpoint)
from turboboa_export.plan import Scheme
from turboboa_export.rotation.hadamard import check_online_rotation, parse_online_rotation

SHAPES: dict[str, dict] = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                      num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      num_hidden_layers=32, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
    "llama3-70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                       num_hidden_layers=80, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         num_hidden_layers=30, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                         max_position_embeddings=8192),
    "tiny-llama": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                       num_hidden_layers=2, vocab_size=512, max_position_embeddings=1024),
}


def shape_config(shape: str, layers: int | None = None, dtype: torch.dtype = torch.float16):
    """The LlamaConfig of a named shape (``dtype``), optionally with fewer layers."""
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise TbqError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    cfg = LlamaConfig(**{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})})
    cfg.dtype = dtype
    return cfg


def tensor_shapes(config) -> dict[str, torch.Size]:
    """Every tensor's name and shape, from a model built on the meta device (tied lm_head left out)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        shapes = {name: t.shape for name, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return shapes


def random_tensors(shapes: dict[str, torch.Size], gen: torch.Generator,
                   dtype: torch.dtype = torch.float16) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in ``shapes``' order, each made when asked for: N(0, 0.02) matrices and norm weights of one."""
    for name, shape in shapes.items():
        yield name, (torch.ones(shape, dtype=dtype) if "norm" in name
                     else (0.02 * torch.randn(shape, generator=gen)).to(dtype))


def random_quantized(out_f: int, in_f: int, spec: GridSpec, group_size: int, gen: torch.Generator) -> QuantizedWeight:
    """Uniform random codes; scales in [0.002, 0.003); zeros mid-grid (symmetric) or uniform (asymmetric)."""
    groups = 1 if group_size == -1 else in_f // group_size
    codes = torch.randint(0, spec.maxq + 1, (out_f, in_f), generator=gen, dtype=torch.uint8)
    scale = 0.002 + 0.001 * torch.rand(out_f, groups, generator=gen)
    zero = (torch.full_like(scale, spec.sym_zero) if spec.sym
            else torch.randint(0, spec.maxq + 1, (out_f, groups), generator=gen).float())
    return QuantizedWeight(codes, scale, zero, contiguous_g_idx(in_f, group_size))


def write_random(shape: str, out: Path, fmt: str = "fp16", bits: int = 4, group_size: int = 128, sym: bool = True,
                 layers: int | None = None, seed: int = 0, overwrite: bool = False,
                 online_rotation: str | None = None, act_bits: int | None = None,
                 dtype: torch.dtype = torch.float16) -> Path:
    """Write a random-weight checkpoint of ``shape`` to ``out`` (``online_rotation``: full | block:B, and
    ``act_bits``: 4 | 8, vllm only; ``dtype``: the fp16 format's, float16 or bfloat16)."""
    config = shape_config(shape, layers, dtype)
    gen = torch.Generator().manual_seed(seed)
    shapes = tensor_shapes(config)
    info = {"random_shape": shape, "layers": config.num_hidden_layers, "seed": seed}
    if fmt == "fp16":
        def fill(tmp: Path) -> None:
            save_sharded(random_tensors(shapes, gen, dtype), tmp)
            config.save_pretrained(tmp)
            (tmp / "tbq_random.json").write_text(json.dumps({**info, "format": "fp16"}, indent=2))

        return write_atomically(out, overwrite, fill)
    if fmt == "w8a8":
        return write_w8a8(config, shapes, gen, out, info, overwrite)
    if fmt != "vllm":
        raise TbqError(f"unknown format {fmt!r}; choose fp16, vllm or w8a8")
    spec = spec_for(config)
    transform = None
    if online_rotation is not None:
        try:
            block = parse_online_rotation(online_rotation)
        except ValueError as e:
            raise TbqError(str(e)) from None
        check_online_rotation(config.intermediate_size, block)
        transform = down_transform(spec.down, config.intermediate_size, block)
        info["online_rotation"] = online_rotation
    weights = {}
    for i in range(config.num_hidden_layers):
        for path in spec.linears().values():
            name = f"{spec.layers}.{i}.{path}"
            out_f, in_f = shapes.pop(f"{name}.weight")
            if group_size != -1 and in_f % group_size:
                raise TbqError(f"group size {group_size} does not divide in_features {in_f} of {name}")
            weights[name] = random_quantized(out_f, in_f, GridSpec(bits, sym), group_size, gen)
    schemes = {name: Scheme(bits, sym, group_size) for name in weights}
    if act_bits is not None:
        info["act_bits"] = act_bits
    return write_vllm_checkpoint(out, weights.items(), random_tensors(shapes, gen), config, schemes, info,
                                 overwrite=overwrite, transform=transform, act_bits=act_bits,
                                 act_clip=None if act_bits is None else 0.9)


def write_w8a8(config, shapes: dict[str, torch.Size], gen: torch.Generator, out: Path, info: dict,
               overwrite: bool) -> Path:
    """Stock W8A8-int8: every decoder linear as int8 codes [N, K] with float32 per-channel scales [N, 1]."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    spec = spec_for(config)
    tensors = {}
    for name in [n for n in shapes if n.startswith(f"{spec.layers}.") and n.endswith("proj.weight")]:
        out_f, in_f = shapes.pop(name)
        tensors[name] = torch.randint(-127, 128, (out_f, in_f), generator=gen, dtype=torch.int8)
        tensors[name[:-len("weight")] + "weight_scale"] = 1e-4 + 1e-4 * torch.rand(out_f, 1, generator=gen)
    tensors.update(random_tensors(shapes, gen))
    weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False)
    acts = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    qcfg = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights,
                                                                           input_activations=acts)},
                              quant_method="compressed-tensors", format="int-quantized",
                              quantization_status="compressed", ignore=["lm_head"])

    def fill(tmp: Path) -> None:
        save_sharded(tensors.items(), tmp)
        config.quantization_config = qcfg.model_dump(exclude_none=True)
        config.save_pretrained(tmp)
        (tmp / "tbq_random.json").write_text(json.dumps({**info, "format": "w8a8"}, indent=2))

    return write_atomically(out, overwrite, fill)


def main(argv: list[str] | None = None, prog: str | None = None) -> Path:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", help=", ".join(SHAPES))
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--format", choices=("fp16", "vllm", "w8a8"), default="fp16")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--online-rotation", help="full | block:B: the online Hadamard of a rotated export")
    ap.add_argument("--act-bits", type=int, choices=(4, 8), help="W4A4 / W4A8 (dynamic per-token activations)")
    ap.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16", help="of the fp16 format")
    a = ap.parse_args(argv)
    try:
        path = write_random(a.shape, a.out, a.format, a.bits, a.group_size, not a.asym, a.layers, a.seed, a.overwrite,
                            a.online_rotation, a.act_bits, getattr(torch, a.dtype))
    except TbqError as e:
        raise SystemExit(f"error: {e}") from None
    print(path)
    return path


if __name__ == "__main__":
    main()
