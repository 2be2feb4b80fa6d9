"""Quantization time and peak GPU memory for one decoder block of Llama-3-8B shape (random weights),
128 x 2048 calibration tokens, per method; the whole model extrapolated (x32 blocks). Prints a table.

    python benchmarks/quant_speed.py [--nsamples 128] [--seqlen 2048] [--bits 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from turboboa_export.arch import LLAMA, attention_shape
from turboboa_export.config import QuantConfig
from turboboa_export.methods import get_method
from turboboa_export.pipeline.sequential import collect_statistics, quantize_linears

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 head_dim=128, rope_theta=500000.0, num_hidden_layers=32, max_position_embeddings=8192)
RUNS = [("gptq", {}), ("boa", {}), ("turboboa N=1", {"rows": 1}), ("turboboa N=4", {"rows": 4}),
        ("turboboa N=16", {"rows": 16}), ("turboboa N=32", {"rows": 32})]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--runs", default=",".join(name for name, _ in RUNS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    config = LlamaConfig(**LLAMA3_8B)
    block = LlamaDecoderLayer(config, 0).to(device=device, dtype=torch.bfloat16).eval()
    rope = LlamaRotaryEmbedding(config).to(device)
    pos = torch.arange(a.seqlen, device=device)[None]
    x = torch.zeros(1, a.seqlen, config.hidden_size, device=device, dtype=torch.bfloat16)
    kwargs = {"position_embeddings": rope(x, pos), "position_ids": pos, "attention_mask": None}
    fp = [torch.randn(a.seqlen, config.hidden_size, device=device, dtype=torch.bfloat16) for _ in range(a.nsamples)]
    q = [t + 0.05 * torch.randn_like(t) for t in fp]
    shape = attention_shape(config)
    original = {n: p.detach().clone() for n, p in block.named_parameters()}
    modules = {role: block.get_submodule(path) for role, path in LLAMA.linears().items()}
    names = {role: role for role in modules}
    rows = []
    by_name = dict(RUNS)
    unknown = [n for n in a.runs.split(",") if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {list(by_name)}")
    asked = [(n, by_name[n]) for n in a.runs.split(",")]
    # first each method once on 2 samples (compiles kernels, captures its CUDA graphs: what a real run pays once,
    # in its first block), then the timed runs in the order asked
    selected = [(f"warmup {n}", extra) for n, extra in dict(asked).items()] + asked
    for name, extra in selected:
        cfg = QuantConfig(method=name.removeprefix("warmup ").split()[0], bits=a.bits, **extra)
        method = get_method(cfg.method)
        with torch.no_grad():
            for n, p in block.named_parameters():
                p.copy_(original[n])
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0 = time.time()
        samples = 2 if name.startswith("warmup") else a.nsamples
        with torch.no_grad():
            stats, _ = collect_statistics(block, LLAMA, fp[:samples], q[:samples], kwargs, method.needs_r(cfg),
                                          method.attention_statistics(cfg, LLAMA, shape))
        sync()
        t1 = time.time()
        with torch.no_grad():
            _, metrics = quantize_linears(modules, names, stats, {role: cfg for role in modules}, shape, device)
        sync()
        t2 = time.time()
        row = {"run": name, "stats_s": t1 - t0, "quant_s": t2 - t1, "block_s": t2 - t0,
               "model_min": (t2 - t0) * config.num_hidden_layers / 60,
               "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
               "per_linear_s": {m["role"]: round(m["seconds"], 2) for m in metrics}}
        print(json.dumps(row), flush=True)
        if not name.startswith("warmup"):
            rows.append(row)
    base = next((r for r in rows if r["run"] == "gptq"), None)
    boa = next((r for r in rows if r["run"] == "boa"), None)
    print(f"\nLlama-3-8B block, {a.nsamples}x{a.seqlen} tokens, W{a.bits} per-channel, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}")
    print("| run | stats s | quantize s | block s | model (x32) min | peak GiB | vs BoA | vs GPTQ |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs_boa = f"{boa['block_s'] / r['block_s']:.2f}x faster" if boa else "-"
        vs_gptq = f"{r['block_s'] / base['block_s']:.2f}x time" if base else "-"
        print(f"| {r['run']} | {r['stats_s']:.1f} | {r['quant_s']:.1f} | {r['block_s']:.1f} | {r['model_min']:.1f} | "
              f"{r['peak_gib']:.1f} | {vs_boa} | {vs_gptq} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
