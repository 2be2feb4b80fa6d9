"""The model card (``README.md``) of an export: where the weights come from, every setting the run used, the
calibration set, the measured perplexity (``eval.json`` in the run folder, written by ``tbq eval ppl --json``) and how
to serve the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from ..pipeline.rundir import EVAL_FILE
from ..vllm_plugin import PLUGIN_QUANT_METHOD


def perplexity_lines(run: Path) -> list[str]:
    """One line per result of the run's ``eval.json`` (a ``tbq eval ppl`` result object or a list of them), or
    "not measured"."""
    f = Path(run) / EVAL_FILE
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return ["not measured"]
    results = data if isinstance(data, list) else [data]
    lines = [f"{r['ppl']:.4g} on {r.get('dataset', '?')} ({r.get('split', '?')} split, {r.get('windows', '?')} windows "
             f"of {r.get('seqlen', '?')} tokens, {r.get('backend', 'torch')})"
             for r in results if isinstance(r, dict) and isinstance(r.get("ppl"), (int, float))]
    return lines or ["not measured"]


def model_card(run: Path, info: dict, fmt: str, out: Path, quant_method: str | None) -> str:
    """Markdown of the card of the ``fmt`` (vllm | hf) export at ``out`` of ``run`` (whose run.json is ``info``);
    ``quant_method`` is the checkpoint's (``tbq``: served only with tbq's vLLM plugin)."""
    cfg, model = info["config"], info.get("model", {})
    q, c, t = cfg["quant"], cfg["calib"], cfg.get("transform", {})
    cov = info.get("calibration", {})
    settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in q.items() if k not in ("rules", "ignore", "method"))
    lines = [
        f"# {Path(out).name}",
        "",
        f"{'Weight-quantized (compressed-tensors pack-quantized)' if fmt == 'vllm' else 'Dense, fake-quantized'} "
        f"checkpoint of `{model.get('source', cfg.get('model'))}` (model type `{model.get('model_type', '?')}`), "
        f"made with tbq {info.get('versions', {}).get('tbq', '?')}.",
        "",
        "## Quantization",
        "",
        f"- method: {q['method']}",
        f"- settings: {settings}",
    ]
    for r in q.get("rules", []):
        lines.append(f"- rule: {json.dumps(r)}")
    dense = info.get("dense_linears", [])
    lines.append(f"- kept dense: lm_head{''.join(', ' + d for d in dense)}")
    distinct = f", {cov['distinct_windows']} distinct windows" if "distinct_windows" in cov else ""
    held = f", the last {c['holdout']} windows held out" if c.get("holdout") else ""
    lines.append(f"- calibration: {c['dataset']}, {c['nsamples']} × {c['seqlen']} tokens, seed {c['seed']}{distinct}"
                 f"{held}")
    rotate = t.get("rotate", "none")
    lines.append(f"- rotation: {rotate}" + (f" (online {t.get('online_rotation')}, seed {t.get('seed')})"
                                            if rotate != "none" else ""))
    lines.append(f"- activation bits: {t.get('act_bits') or 'none (16-bit)'}; KV-cache bits: "
                 f"{t.get('kv_bits') or 'none (16-bit)'}")
    lines += ["", "## Perplexity", "", *(f"- {line}" for line in perplexity_lines(run)), "", "## Serve", "",
              "```bash", f"vllm serve {out}", "```"]
    if quant_method == PLUGIN_QUANT_METHOD:
        lines += ["", f"`quant_method: {PLUGIN_QUANT_METHOD}`: needs tbq's vLLM plugin (`pip install tbq` into the "
                      "Python that runs vLLM); stock vLLM refuses it."]
    return "\n".join(lines) + "\n"
