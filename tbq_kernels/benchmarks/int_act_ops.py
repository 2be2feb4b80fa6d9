"""The activation side of a W4A4/W4A8 layer against stock W8A8's, per op, on one GPU (issue 15's prefill gap):

    python -m tbq_kernels.benchmarks.int_act_ops [--shape llama3-8b-vllm] [--tokens 1,16,2048,16384] [--json OUT]

For each token count T, microseconds per call (CUDA-graph replay) of: vLLM's ``scaled_int8_quant`` (what stock W8A8
runs before each linear), tbq's per-token codes (``int_act.quantize_act`` under torch.compile, as vLLM compiles it),
the online down_proj Hadamard as two passes (``tbq::hadamard_mix`` + Hadacore, then the codes) and fused
(``hadamard_quant``), and the CUTLASS int8 GEMM of each linear. Per layer: the activation ops summed, stock and tbq
(qkv, o and gate_up inputs quantized alone, down_proj's with its Hadamard), beside the GEMMs'. Needs vLLM.
"""

from __future__ import annotations

import argparse
import json

import torch

from tbq_kernels.benchmarks.timing import SHAPES, graph_time


def main(argv: list[str] | None = None) -> dict:
    import vllm._custom_ops as ops

    from tbq_kernels.hadamard_quant import hadamard_quant
    from tbq_kernels.int_act import quantize_act
    from turboboa_export.rotation.hadamard import base_matrix, factor
    from turboboa_export.vllm_classes import full_transform, hadacore_or_butterflies

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3-8b-vllm")
    ap.add_argument("--tokens", default="1,16,2048,16384")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    shapes = SHAPES[a.shape]
    k_down = shapes["down"][1]
    m, p = factor(k_down)
    base16 = base_matrix(m).T.contiguous().half().cuda()
    base32 = base_matrix(m).T.contiguous().float().cuda()
    codes = torch.compile(lambda x: quantize_act(x, a.bits, 0.9), dynamic=True)
    rows = []
    for t in (int(v) for v in a.tokens.split(",")):
        x_in = torch.randn(t, shapes["o"][1], device="cuda", dtype=torch.float16)
        x_down = torch.randn(t, k_down, device="cuda", dtype=torch.float16)
        row = {"tokens": t,
               "w8a8_quant_in": graph_time(lambda: ops.scaled_int8_quant(x_in, symmetric=True)),
               "tbq_quant_in": graph_time(lambda: codes(x_in)),
               "w8a8_quant_down": graph_time(lambda: ops.scaled_int8_quant(x_down, symmetric=True)),
               "tbq_two_pass_down": graph_time(lambda: codes(full_transform(x_down, base16, hadacore_or_butterflies))),
               "tbq_fused_down": graph_time(lambda: hadamard_quant(x_down, base32, p, a.bits, 0.9))}
        for name, (n, k) in shapes.items():
            q = torch.randint(-8, 8, (t, k), device="cuda", dtype=torch.int8)
            w = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8).t()
            s_x, s_w = torch.rand(t, 1, device="cuda"), torch.rand(n, 1, device="cuda")
            row[f"gemm_{name}"] = graph_time(lambda: ops.cutlass_scaled_mm(q, w, s_x, s_w, torch.float16))
        row = {k: v * 1e6 if k != "tokens" else v for k, v in row.items()}
        inputs = len(shapes) - 1
        row["layer_w8a8_acts"] = inputs * row["w8a8_quant_in"] + row["w8a8_quant_down"]
        row["layer_tbq_acts_fused"] = inputs * row["tbq_quant_in"] + row["tbq_fused_down"]
        row["layer_tbq_acts_two_pass"] = inputs * row["tbq_quant_in"] + row["tbq_two_pass_down"]
        row["layer_gemms"] = sum(row[f"gemm_{name}"] for name in shapes)
        rows.append(row)
    cols = [k for k in rows[0] if k != "tokens"]
    print("| op (us) | " + " | ".join(f"T={r['tokens']}" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for c in cols:
        print(f"| {c} | " + " | ".join(f"{r[c]:.1f}" for r in rows) + " |")
    out = {"shape": a.shape, "bits": a.bits, "device": torch.cuda.get_device_name(), "rows": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
