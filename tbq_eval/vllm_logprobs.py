"""Prompt log-probs and greedy continuations of token-id prompts from vLLM's offline engine, as JSON.

Runs in a Python that has vLLM (the CPU build in CI, the GPU bundle on the lent machine):

    python tbq_eval/vllm_logprobs.py CHECKPOINT PROMPTS.json OUT.json [--dtype auto] [--max-tokens 8]
                                   [--tensor-parallel-size 1]

PROMPTS.json is a list of token-id lists; OUT.json gets, per prompt, the log-prob vLLM gives each prompt token
after the first and the greedy continuation. $TBQ_VLLM_GPU_MEMORY (a fraction) caps vLLM's share of GPU memory
when other work shares the GPU.
"""

from __future__ import annotations

import argparse
import json

from vllm_common import leave, memory_share  # sibling module: these scripts run as files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("prompts")
    ap.add_argument("out")
    ap.add_argument("--dtype", default="auto", help="auto: the checkpoint's own fp16/bf16")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=256)
    a = ap.parse_args()
    from vllm import LLM, SamplingParams

    prompts = json.load(open(a.prompts))
    llm = LLM(a.checkpoint, dtype=a.dtype, max_model_len=a.max_model_len, enforce_eager=True,
              max_num_batched_tokens=a.max_model_len, max_num_seqs=8, skip_tokenizer_init=True,
              tensor_parallel_size=a.tensor_parallel_size, **memory_share())
    params = SamplingParams(max_tokens=a.max_tokens, temperature=0.0, prompt_logprobs=1, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    result = []
    for p, o in zip(prompts, outs):
        lp = [o.prompt_logprobs[i][tok].logprob for i, tok in enumerate(p) if i > 0]
        result.append({"prompt_logprobs": lp, "greedy": list(o.outputs[0].token_ids)})
    with open(a.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
    leave()
