"""Serving cost of the online rotation: vLLM decode throughput of a W4 g128 export, unrotated and with its online
down_proj Hadamard (``full`` and ``block:B``), side by side in one run, plus checkpoint sizes; optionally the
tensor-parallel check (the block export's prompt log-probs at TP = N against TP = 1, its throughput, and the full
export at TP = N, refused or served).

    python benchmarks/rotation_serving.py [--shape llama3-8b] [--block 512] [--batch-sizes 1,16,128]
        [--input-len 128] [--output-len 128] [--vllm-python python3] [--tp 2] [--ckpts /tmp/rotck] --json OUT.json

Weights are random (throughput does not depend on their values). The rotated checkpoints hold exactly the
unrotated one's tensors (tests/test_online_rotation.py::test_rotated_export_stores_no_matrix: tbq stores no
Hadamard), so they are written as the same shards (hard links) with the config.json a rotated export gets.
The vLLM Python must find tbq's plugin (``vllm.general_plugins`` entry point) for the ``full`` form.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tbq_eval import throughput  # noqa: E402
from tbq_eval.ppl import VLLM_ENV  # noqa: E402
from tbq_eval.random_checkpoint import shape_config, write_random  # noqa: E402
from turboboa_export.arch import spec_for  # noqa: E402
from turboboa_export.export.compressed_tensors import down_transform  # noqa: E402
from turboboa_export.rotation.hadamard import parse_online_rotation  # noqa: E402

LOGPROBS = ROOT / "tbq_eval" / "vllm_logprobs.py"


def rotated_copy(src: Path, out: Path, online: str, shape: str) -> Path:
    """``src``'s shards hard-linked into ``out`` with the quantization_config of a rotated export."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    for f in src.iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            os.link(f, out / f.name)
    n = config["intermediate_size"]
    tcfg, method = down_transform(spec_for(shape_config(shape)).down, n, parse_online_rotation(online))
    config["quantization_config"].update(transform_config=tcfg, quant_method=method)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def size_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def logprobs(ckpt: Path, prompts: list[list[int]], vllm_python: str, tp: int, log: Path) -> list[dict] | str:
    """vLLM's prompt log-probs at tensor-parallel size ``tp``, or the last error line vLLM printed."""
    with tempfile.TemporaryDirectory() as tmp:
        p, o = Path(tmp) / "p.json", Path(tmp) / "o.json"
        p.write_text(json.dumps(prompts))
        with open(log, "w") as f:
            subprocess.run([vllm_python, str(LOGPROBS), str(ckpt), str(p), str(o), "--max-tokens", "1",
                            "--tensor-parallel-size", str(tp)], env={**os.environ, **VLLM_ENV}, stdout=f,
                           stderr=subprocess.STDOUT)
        if o.is_file():
            return json.loads(o.read_text())
    lines = log.read_text().splitlines()
    ours = [line for line in lines if "online Hadamard" in line]  # the plugin's one-line refusal, if it was that
    errors = ours or [line for line in lines if "Error" in line or "error" in line]
    return errors[-1] if errors else "vLLM failed without an error line"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--batch-sizes", default="1,16,128")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--vllm-python", default=os.environ.get("TBQ_VLLM_PYTHON", sys.executable))
    ap.add_argument("--tp", type=int, default=1, help="also run the tensor-parallel check at this size (> 1)")
    ap.add_argument("--skip-throughput", action="store_true", help="sizes (and the TP log-probs) only")
    ap.add_argument("--ckpts", type=Path, default=Path("/tmp/rotck"))
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args(argv)
    plain = a.ckpts / f"{a.shape}-w4g128"
    if not (plain / "config.json").is_file():
        write_random(a.shape, plain, "vllm", 4, 128, True, a.layers)
    forms = {"unrotated": plain, "full": rotated_copy(plain, a.ckpts / f"{a.shape}-w4g128-full", "full", a.shape),
             f"block:{a.block}": rotated_copy(plain, a.ckpts / f"{a.shape}-w4g128-block{a.block}", f"block:{a.block}",
                                               a.shape)}
    result: dict = {"shape": a.shape, "sizes": {k: size_bytes(v) for k, v in forms.items()}}
    print("| export | size GB | size / unrotated |\n|---|---|---|")
    for k, v in result["sizes"].items():
        print(f"| {k} | {v / 1e9:.3f} | {v / result['sizes']['unrotated']:.4f} |")
    if not a.skip_throughput:
        rows = []
        for label, ckpt in forms.items():  # the unrotated and block exports by stock vLLM: tbq's plugin not loaded
            stock = "compressed-tensors" == json.loads((ckpt / "config.json").read_text())["quantization_config"][
                "quant_method"]
            os.environ["VLLM_PLUGINS"] = "none" if stock else "tbq"
            rows += throughput.offline([str(ckpt)], [label + (" (stock vLLM)" if stock else " (tbq plugin)")],
                                       [int(b) for b in a.batch_sizes.split(",")], a.input_len, a.output_len,
                                       a.vllm_python)
        os.environ.pop("VLLM_PLUGINS")
        result["throughput"] = rows
        print(throughput.offline_table(rows))
    a.json.write_text(json.dumps(result, indent=2))
    if a.tp > 1:
        import random

        rng = random.Random(0)
        prompts = [[rng.randrange(3, 32000) for _ in range(48)] for _ in range(4)]
        block = forms[f"block:{a.block}"]
        one = logprobs(block, prompts, a.vllm_python, 1, a.json.with_suffix(".tp1.log"))
        many = logprobs(block, prompts, a.vllm_python, a.tp, a.json.with_suffix(f".tp{a.tp}.log"))
        full = logprobs(forms["full"], prompts, a.vllm_python, a.tp, a.json.with_suffix(f".full-tp{a.tp}.log"))
        tp = {"tp": a.tp, "block_tp1_ok": isinstance(one, list), "block_tp_ok": isinstance(many, list),
              "full_tp": full if isinstance(full, str) else "served"}
        if isinstance(one, list) and isinstance(many, list):
            tp["max_abs_logprob_diff"] = max(abs(x - y) for o1, o2 in zip(one, many)
                                            for x, y in zip(o1["prompt_logprobs"], o2["prompt_logprobs"]))
        if isinstance(many, list) and not a.skip_throughput:
            rows = throughput.offline([str(block)], [f"block:{a.block} TP={a.tp}"],
                                      [int(b) for b in a.batch_sizes.split(",")], a.input_len, a.output_len,
                                      a.vllm_python, tensor_parallel_size=a.tp)
            tp["throughput"] = rows
            print(throughput.offline_table(rows))
        result["tensor_parallel"] = tp
        print(json.dumps({k: v for k, v in tp.items() if k != "throughput"}, indent=2))
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
