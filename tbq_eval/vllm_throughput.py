"""vLLM offline decode throughput of one checkpoint at several batch sizes, as JSON. Runs in a Python with vLLM
(the CPU build in CI, the GPU bundle on the lent machine); `python -m tbq_eval.throughput offline` drives it.

    python tbq_eval/vllm_throughput.py CHECKPOINT OUT.json [--batch-sizes 1,16,128] [--input-len 128]
                                   [--output-len 256] [--dtype auto] [--enforce-eager] [--seed 0]
                                   [--tensor-parallel-size 1] [--prefill 8x2048] [--load-format auto]

Each batch is that many random-token prompts generated to exactly --output-len tokens (ignore_eos), after one
warm-up; output tokens per second = batch * output-len / wall seconds of the generate call. ``--prefill BxL`` adds
a row for B prompts of L tokens each generating one token (all B*L tokens in one scheduler step): prompt tokens
per second = B * L / wall seconds. ``--load-format dummy``: vLLM draws the weights itself (only config.json is read).
$TBQ_VLLM_GPU_MEMORY (a fraction) caps vLLM's share of GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

from vllm_common import leave, memory_share  # sibling module: these scripts run as files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--batch-sizes", default="1,16,128")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--dtype", default="auto", help="auto: the checkpoint's own fp16/bf16")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefill", help="BxL: also measure prefill of B prompts of L tokens")
    ap.add_argument("--load-format", default="auto", help="vLLM's load_format (dummy: random weights, no files)")
    a = ap.parse_args()
    from vllm import LLM, SamplingParams

    sizes = [int(b) for b in a.batch_sizes.split(",")]
    vocab = json.load(open(os.path.join(a.checkpoint, "config.json")))["vocab_size"]
    pre_b, pre_l = (int(v) for v in a.prefill.split("x")) if a.prefill else (0, 0)
    length = max(a.input_len + a.output_len, pre_l + 1)
    llm = LLM(a.checkpoint, dtype=a.dtype, max_model_len=length + 8, max_num_seqs=max(sizes + [pre_b]), seed=a.seed,
              max_num_batched_tokens=max(length + 8, 2048, pre_b * pre_l), enforce_eager=a.enforce_eager,
              skip_tokenizer_init=True, load_format=a.load_format,
              tensor_parallel_size=a.tensor_parallel_size, **memory_share())
    rng = random.Random(a.seed)
    params = SamplingParams(max_tokens=a.output_len, min_tokens=a.output_len, ignore_eos=True, temperature=0.0,
                            detokenize=False)

    def prompts(n, length=a.input_len):
        return [{"prompt_token_ids": [rng.randrange(3, vocab) for _ in range(length)]} for _ in range(n)]

    llm.generate(prompts(2), SamplingParams(max_tokens=8, ignore_eos=True, detokenize=False), use_tqdm=False)
    rows = []
    for b in sizes:
        batch = prompts(b)
        t0 = time.perf_counter()
        outs = llm.generate(batch, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        generated = sum(len(o.outputs[0].token_ids) for o in outs)
        rows.append({"batch": b, "input_len": a.input_len, "output_len": a.output_len, "seconds": seconds,
                     "output_tokens": generated, "output_tok_s": generated / seconds})
        print(f"[throughput] batch {b}: {generated / seconds:.1f} output tok/s", file=sys.stderr, flush=True)
    if pre_b:
        one = SamplingParams(max_tokens=1, ignore_eos=True, detokenize=False)
        llm.generate(prompts(pre_b, pre_l), one, use_tqdm=False)  # warm-up at this shape
        t0 = time.perf_counter()
        llm.generate(prompts(pre_b, pre_l), one, use_tqdm=False)
        seconds = time.perf_counter() - t0
        rows.append({"batch": pre_b, "input_len": pre_l, "output_len": 1, "seconds": seconds,
                     "prefill_tok_s": pre_b * pre_l / seconds})
        print(f"[throughput] prefill {pre_b}x{pre_l}: {pre_b * pre_l / seconds:.0f} prompt tok/s", file=sys.stderr,
              flush=True)
    with open(a.out, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main()
    leave()
