"""Zero-shot accuracy with lm-evaluation-harness.

    python -m tbq_eval.zeroshot TARGET [--tasks piqa,hellaswag,arc_easy,arc_challenge,winogrande,boolq,lambada]
                           [--backend hf|vllm] [--include-path DIR] [--limit N] [--batch-size 8] [--dtype auto]
                           [--json OUT]

hf backend: TARGET is a tbq run (its fake-quantized weights), a Hugging Face folder or a built-in name, run in
this process. vllm backend: TARGET is a checkpoint vLLM serves (a `tbq export` folder), and lm-eval's vLLM
model runs in this Python, which must have vLLM. The standard tasks download their data from the hub; tasks
of your own (YAML files in --include-path) can read local files. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from turboboa_export.errors import TbqError
from turboboa_export.pipeline.sequential import pick_device

from .ppl import load_for_eval, serving_dtype, torch_dtype

DEFAULT_TASKS = "piqa,hellaswag,arc_easy,arc_challenge,winogrande,boolq,lambada"
PREFERRED = ("acc_norm,none", "acc,none")  # the metric reported per task, first present wins


def lm_for(target: str, backend: str, batch_size: int, device: str, dtype: str = "auto"):
    """An lm-eval LM object for ``target``, in ``dtype`` (``auto``: hf the model's own, vllm the checkpoint's
    fp16/bf16, per family)."""
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        model, tok = load_for_eval(target, torch_dtype(dtype))
        dev = pick_device(device)
        return HFLM(pretrained=model.to(dev), tokenizer=tok, batch_size=batch_size, device=str(dev))
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(pretrained=target, dtype=serving_dtype(target, dtype), batch_size="auto", max_model_len=2048)
    raise TbqError(f"unknown backend {backend!r}; choose hf or vllm")


def evaluate(target: str, tasks: list[str], backend: str = "hf", include_path: Path | None = None,
             limit: int | None = None, batch_size: int = 8, device: str = "auto",
             dtype: str = "auto") -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's simple_evaluate (zero-shot, seeded)."""
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise TbqError(f"unknown lm-eval task(s) {unknown}; check the name or pass --include-path with its YAML")
    lm = lm_for(target, backend, batch_size, device, dtype)
    out = evaluator.simple_evaluate(model=lm, tasks=tasks, num_fewshot=0,
                                    limit=limit, task_manager=manager, log_samples=False, random_seed=0,
                                    numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, metrics in out["results"].items()}


def headline(metrics: dict[str, float]) -> tuple[str, float]:
    """The metric shown for a task: acc_norm, else acc, else the first one."""
    for key in PREFERRED:
        if key in metrics:
            return key.split(",")[0], metrics[key]
    key = next(k for k in metrics if "stderr" not in k)
    return key.split(",")[0], metrics[key]


def table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| task | metric | value |", "|---|---|---|"]
    for task, metrics in results.items():
        name, value = headline(metrics)
        lines.append(f"| {task} | {name} | {value:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    ap.add_argument("--include-path", type=Path)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    try:
        results = evaluate(a.target, a.tasks.split(","), a.backend, a.include_path, a.limit, a.batch_size, a.device,
                           a.dtype)
    except TbqError as e:
        raise SystemExit(f"error: {e}") from None
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps({"target": a.target, "backend": a.backend, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
