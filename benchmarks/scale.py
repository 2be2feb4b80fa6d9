"""Quantizing at scale: random-weight bf16 checkpoints of real shapes (Llama-3-8B whole, Llama-3-70B with a few
blocks), each quantized by ``tbq quantize`` on 1 and on N GPUs (``--gpus``), measuring per-block seconds, the
whole model extrapolated from them, peak GPU memory and peak host RSS. Prints a table, writes JSON.

    PYTHONPATH=. python benchmarks/scale.py --work /tmp/scale [--models llama3-8b,llama3-70b:4] [--gpus 1,2]
        [--nsamples 128] [--seqlen 2048] [--json scale.json] [-- EXTRA tbq quantize FLAGS]

Checkpoints (with a word-level tokenizer over 8,000 made-up words) and the calibration text are written once
under ``--work`` and reused; each run folder is deleted after it is measured (an 8B run holds 8 GB of codes).
Per block: the gaps between consecutive block files' write times (their median; block 0 also pays for the
calibration capture). Extrapolated: the run's total minus its blocks, plus the real model's blocks at that rate.
Host memory, sampled every 0.2 s: ``host GB`` the largest sum of resident memory over the tbq processes (the
launcher and its ranks), ``max proc GB`` the largest single process's peak (VmHWM; with one GPU, the run's
peak RSS). GPU: the largest ``peak_memory_bytes`` in metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORDS = 8000


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A whitespace word-level tokenizer over w0, w1, ... (at most WORDS, inside the model's vocabulary; other
    words are <unk>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"w{i}": i + 1 for i in range(min(WORDS, vocab_size - 1))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)


def checkpoint(work: Path, shape: str, layers: int | None) -> Path:
    """The random bf16 checkpoint of ``shape`` (``layers`` blocks, or all), written once."""
    import torch

    from tbq_eval.random_checkpoint import SHAPES, write_random

    folder = work / f"{shape}-{layers or 'all'}-bf16"
    if not (folder / "tokenizer_config.json").is_file():
        print(f"writing {folder} ...", file=sys.stderr, flush=True)
        write_random(shape, folder, "fp16", layers=layers, overwrite=True, dtype=torch.bfloat16)
        write_tokenizer(folder, SHAPES[shape]["vocab_size"])
    return folder


def calibration_text(work: Path, tokens: int) -> Path:
    """``tokens`` random words (seed 0), written once."""
    path = work / f"calib-{tokens}.txt"
    if not path.is_file():
        rng = random.Random(0)
        path.write_text(" ".join(f"w{rng.randrange(WORDS)}" for _ in range(tokens)))
    return path


def tree_memory(root: int) -> dict[int, tuple[int, int]]:
    """pid -> (resident bytes now, peak resident bytes so far) of process ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if line.startswith(("VmRSS", "VmHWM")))
            out[pid] = tuple(int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))
        except (OSError, KeyError):
            pass
    return out


def measure(ckpt: Path, run: Path, calib: Path, gpus: int, args, extra: list[str]) -> dict:
    """One ``tbq quantize`` run: its command, wall seconds, timings and the peaks."""
    cmd = [sys.executable, "-m", "tbq_cli.main", "quantize", str(ckpt), "-o", str(run), "--overwrite", "--quiet",
           "--dataset", str(calib), "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
           *(["--gpus", str(gpus)] if gpus > 1 else []), *extra]
    print(" ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    total, hwm = 0, {}
    while proc.poll() is None:
        now = tree_memory(proc.pid)
        total = max(total, sum(rss for rss, _ in now.values()))
        hwm.update({pid: max(peak, hwm.get(pid, 0)) for pid, (_, peak) in now.items()})
        time.sleep(0.2)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"error: the run failed (exit {proc.returncode}): {' '.join(cmd)}")
    info = json.loads((run / "run.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    stamps = [f.stat().st_mtime for f in sorted((run / "blocks").glob("*.safetensors"))]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    blocks = len(stamps)
    per_block = statistics.median(gaps) if gaps else info["timings"]["quantize_seconds"]
    out = {"command": cmd, "gpus": gpus, "blocks": blocks, "wall_seconds": wall, **info["timings"],
           "block_seconds": per_block, "peak_gpu_bytes": max(m["peak_memory_bytes"] for m in metrics),
           "host_rss_sum_bytes": total, "host_rss_max_process_bytes": max(hwm.values(), default=0)}
    out["fixed_seconds"] = wall - blocks * per_block
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for checkpoints, text and runs (~40 GB)")
    ap.add_argument("--models", default="llama3-8b,llama3-70b:4",
                    help="SHAPE[:BLOCKS] list (shapes of tbq_eval.random_checkpoint; default %(default)s)")
    ap.add_argument("--gpus", default="1,2", help="process counts to run each model with (default %(default)s)")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--keep-runs", action="store_true", help="keep the run folders")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    from tbq_eval.random_checkpoint import SHAPES

    a.work.mkdir(parents=True, exist_ok=True)
    calib = calibration_text(a.work, int(a.nsamples * a.seqlen * 1.2) + a.seqlen)
    results = []
    for item in a.models.split(","):
        shape, _, layers = item.partition(":")
        if shape not in SHAPES:
            raise SystemExit(f"error: unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
        ckpt = checkpoint(a.work, shape, int(layers) if layers else None)
        real_blocks = SHAPES[shape]["num_hidden_layers"]
        for gpus in (int(g) for g in a.gpus.split(",")):
            run = a.work / f"run-{ckpt.name}-{gpus}gpu"
            r = measure(ckpt, run, calib, gpus, a, extra)
            r.update(model=shape, real_blocks=real_blocks,
                     extrapolated_seconds=r["fixed_seconds"] + real_blocks * r["block_seconds"])
            results.append(r)
            if not a.keep_runs:
                shutil.rmtree(run)
    one = {r["model"]: r["extrapolated_seconds"] for r in results if r["gpus"] == 1}
    print(f"{'model':<12}{'GPUs':>5}{'blocks':>8}{'s/block':>9}{'run s':>8}{'whole model s':>15}{'vs 1 GPU':>10}"
          f"{'GPU GB':>8}{'host GB':>9}{'max proc GB':>13}")
    for r in results:
        ratio = r["extrapolated_seconds"] / one[r["model"]] if r["model"] in one else float("nan")
        print(f"{r['model']:<12}{r['gpus']:>5}{r['blocks']:>8}{r['block_seconds']:>9.2f}{r['wall_seconds']:>8.1f}"
              f"{r['extrapolated_seconds']:>15.1f}{ratio:>10.3f}{r['peak_gpu_bytes'] / 2**30:>8.1f}"
              f"{r['host_rss_sum_bytes'] / 2**30:>9.2f}{r['host_rss_max_process_bytes'] / 2**30:>13.2f}")
    if a.json:
        import torch

        env = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "cpus": os.cpu_count(), "nsamples": a.nsamples, "seqlen": a.seqlen, "extra": extra}
        a.json.write_text(json.dumps({"environment": env, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
