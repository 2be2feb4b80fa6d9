"""vLLM decode throughput: offline at several batch sizes, and a serving benchmark against a running server.

    python -m tbq_eval.throughput offline CKPT [CKPT ...] [--labels fp16,w4] [--batch-sizes 1,16,128]
                              [--input-len 128] [--output-len 256] [--vllm-python PY] [--json OUT]
                              [--disabled-kernels ";TbqDequantLinearKernel,MacheteLinearKernel"] [--prefill 8x2048]
    python -m tbq_eval.throughput serve URL [--model NAME] [--concurrency 1,16] [--requests 32]
                              [--input-len 128] [--output-len 128] [--json OUT]

``offline`` runs each checkpoint in turn in a Python with vLLM (default $TBQ_VLLM_PYTHON, else this one), in
one invocation so the numbers sit side by side; ``tbq_eval.random_checkpoint`` makes real shapes with random
weights. A checkpoint may repeat with other ``--disabled-kernels`` (vLLM's VLLM_DISABLED_KERNELS, one
';'-separated entry per checkpoint) to compare linear kernels: tbq's plugin, Machete, Marlin. ``serve`` streams
completions from an OpenAI-compatible server (`vllm serve`) at each concurrency and reports output tokens per
second, time to first token and latency. Both print a Markdown table and write JSON. ``--prefill BxL`` adds a
column of prompt tokens per second for B prompts of L tokens in one step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from turboboa_export.errors import TbqError
from turboboa_export.export.compressed_tensors import check_vllm_servable

from .ppl import VLLM_ENV, default_vllm_python, serving_dtype

WORKER = Path(__file__).with_name("vllm_throughput.py")


def offline(checkpoints: list[str], labels: list[str], batch_sizes: list[int], input_len: int, output_len: int,
            vllm_python: str, enforce_eager: bool = False, disabled_kernels: list[str] | None = None,
            dtype: str = "auto", tensor_parallel_size: int = 1, prefill: str | None = None,
            load_format: str = "auto") -> list[dict]:
    """One row per (checkpoint, batch size): output tokens per second of vLLM's offline generate, in ``dtype``
    (``auto``: each checkpoint's fp16/bf16, per family), at ``tensor_parallel_size``; with ``prefill`` "BxL" one
    more row per checkpoint with prompt tokens per second (``prefill_tok_s``); ``load_format`` is vLLM's (dummy: it
    draws the weights, reading only config.json)."""
    rows = []
    for ckpt in checkpoints:
        check_vllm_servable(Path(ckpt), vllm_python)
    for ckpt, label, disabled in zip(checkpoints, labels, disabled_kernels or [None] * len(checkpoints)):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            cmd = [vllm_python, str(WORKER), ckpt, str(out), "--batch-sizes", ",".join(map(str, batch_sizes)),
                   "--input-len", str(input_len), "--output-len", str(output_len),
                   "--dtype", serving_dtype(ckpt, dtype), "--tensor-parallel-size", str(tensor_parallel_size)]
            env = {**os.environ, **VLLM_ENV, **({} if disabled is None else {"VLLM_DISABLED_KERNELS": disabled})}
            cmd += (["--enforce-eager"] if enforce_eager else []) + (["--prefill", prefill] if prefill else [])
            cmd += ["--load-format", load_format]
            done = subprocess.run(cmd, env=env)
            if done.returncode != 0 or not out.is_file():
                raise TbqError(f"vLLM ({vllm_python}) failed on {ckpt} (exit {done.returncode}); its log is above")
            rows += [{"label": label, "checkpoint": ckpt, **r} for r in json.loads(out.read_text())]
    return rows


def offline_table(rows: list[dict]) -> str:
    """Markdown: one line per checkpoint, tok/s per batch size (and prefill), and the ratio to the first checkpoint."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    sizes = sorted({r["batch"] for r in rows if "output_tok_s" in r})
    tps = {(r["label"], r["batch"]): r["output_tok_s"] for r in rows if "output_tok_s" in r}
    tps.update({(r["label"], "prefill"): r["prefill_tok_s"] for r in rows if "prefill_tok_s" in r})
    pre = next((f"prefill {r['batch']}x{r['input_len']} tok/s" for r in rows if "prefill_tok_s" in r), None)
    columns = sizes + (["prefill"] if pre else [])
    base = labels[0]
    lines = ["| checkpoint | " + " | ".join(f"batch {b} tok/s" for b in sizes) + (f" | {pre}" if pre else "") + " |",
             "|---|" + "---|" * len(columns)]
    for label in labels:
        cells = []
        for b in columns:
            v = tps.get((label, b))
            ratio = f" ({v / tps[(base, b)]:.2f}x)" if v and label != base and (base, b) in tps else ""
            cells.append("-" if v is None else f"{v:.0f}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _post_stream(url: str, body: dict, timeout: float) -> tuple[float, float, int]:
    """(time to first token, latency, completion tokens) of one streamed completion."""
    req = urllib.request.Request(f"{url}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    with urllib.request.urlopen(req, timeout=timeout) as reply:
        for raw in reply:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices") and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return ttft or float("nan"), time.perf_counter() - t0, tokens


def served_model(url: str) -> str:
    """The first model a server lists."""
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as reply:
        return json.loads(reply.read())["data"][0]["id"]


def serve(url: str, model: str | None, concurrency: list[int], requests: int, input_len: int, output_len: int,
          vocab_size: int = 100, seed: int = 0, timeout: float = 600) -> list[dict]:
    """One row per concurrency: ``requests`` streamed completions of random-token prompts, ``concurrency`` at once."""
    url = url.rstrip("/")
    model = model or served_model(url)
    rng = random.Random(seed)
    rows = []
    for c in concurrency:
        bodies = [{"model": model, "prompt": [rng.randrange(3, vocab_size) for _ in range(input_len)],
                   "max_tokens": output_len, "min_tokens": output_len, "ignore_eos": True, "temperature": 0,
                   "stream": True, "stream_options": {"include_usage": True}} for _ in range(requests)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            results = list(tqdm(pool.map(lambda b: _post_stream(url, b, timeout), bodies), total=requests,
                                desc=f"concurrency {c}"))
        wall = time.perf_counter() - t0
        ttft, latency, tokens = (list(x) for x in zip(*results))
        rows.append({"concurrency": c, "requests": requests, "input_len": input_len, "output_len": output_len,
                     "seconds": wall, "output_tokens": sum(tokens), "output_tok_s": sum(tokens) / wall,
                     "requests_s": requests / wall, "ttft_s_median": statistics.median(ttft),
                     "latency_s_median": statistics.median(latency), "latency_s_max": max(latency)})
    return rows


def serve_table(rows: list[dict]) -> str:
    lines = ["| concurrency | output tok/s | requests/s | median TTFT s | median latency s |", "|---|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['output_tok_s']:.1f} | {r['requests_s']:.2f} | {r['ttft_s_median']:.3f} | "
              f"{r['latency_s_median']:.2f} |" for r in rows]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None, prog: str | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    off = sub.add_parser("offline", help="vLLM offline generate at several batch sizes")
    off.add_argument("checkpoints", nargs="+")
    off.add_argument("--labels", help="comma-separated names, one per checkpoint (default: folder names)")
    off.add_argument("--batch-sizes", type=_ints, default=[1, 16, 128])
    off.add_argument("--output-len", type=int, default=256)
    off.add_argument("--vllm-python", default=default_vllm_python())
    off.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (what the CPU build runs)")
    off.add_argument("--disabled-kernels", help="';'-separated VLLM_DISABLED_KERNELS, one entry per checkpoint")
    off.add_argument("--tensor-parallel-size", type=int, default=1)
    off.add_argument("--dtype", default="auto", help="vLLM's activation dtype (auto: each checkpoint's, per family)")
    off.add_argument("--prefill", help="BxL: also prompt tok/s of B prompts of L tokens (e.g. 8x2048)")
    srv = sub.add_parser("serve", help="streamed completions against a running OpenAI-compatible server")
    srv.add_argument("url")
    srv.add_argument("--model")
    srv.add_argument("--concurrency", type=_ints, default=[1, 16])
    srv.add_argument("--requests", type=int, default=32)
    srv.add_argument("--output-len", type=int, default=128)
    srv.add_argument("--vocab-size", type=int, default=100, help="prompt token ids are drawn below this")
    for p in (off, srv):
        p.add_argument("--input-len", type=int, default=128)
        p.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.mode == "offline":
            labels = a.labels.split(",") if a.labels else [Path(c).name for c in a.checkpoints]
            disabled = a.disabled_kernels.split(";") if a.disabled_kernels is not None else None
            for name, given in (("labels", labels), ("--disabled-kernels entries", disabled or a.checkpoints)):
                if len(given) != len(a.checkpoints):
                    raise TbqError(f"{len(given)} {name} for {len(a.checkpoints)} checkpoints; give one each")
            rows = offline(a.checkpoints, labels, a.batch_sizes, a.input_len, a.output_len, a.vllm_python,
                           a.enforce_eager, disabled, a.dtype, a.tensor_parallel_size, a.prefill)
            table = offline_table(rows)
        else:
            rows = serve(a.url, a.model, a.concurrency, a.requests, a.input_len, a.output_len, a.vocab_size)
            table = serve_table(rows)
    except (TbqError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    print(table)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
