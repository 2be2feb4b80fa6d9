"""Result JSON files -> a Markdown report, PNG plots and one machine-readable JSON.

    python -m tbq_eval.report --protocol results.jsonl [...] [--throughput offline.json [...]] -o DIR [--official]

Protocol rows come from `tbq_eval.protocol` (one JSON object per line), throughput rows from
`tbq_eval.throughput offline --json`. Writes DIR/report.md, DIR/report.json, DIR/ppl_vs_bits.png and
DIR/throughput.png (when there are throughput rows). ``--official`` adds the official TurboBoA code's figures on
the same protocol (algorithm.md section 8) beside ours.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from turboboa_export.atomic import atomic_write_bytes

from .throughput import offline_table

METHOD_ORDER = ("fp", "rtn", "gptq", "boa", "turboboa")
# The official TurboBoA code on SmolLM2-135M, one H100, algorithm.md section 8: (run, held-out ppl, seconds).
OFFICIAL = [("turboboa-w2 (official code)", 2, -1, 79.107, 316.0), ("turboboa-w3 (official code)", 3, -1, 13.283, 332.0)]


def read_rows(paths: list[Path]) -> list[dict]:
    """Rows of JSON-lines or JSON-list files; later files win for a repeated run name."""
    rows: dict[str, dict] = {}
    for path in paths:
        text = Path(path).read_text()
        items = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
        for i, row in enumerate(items):
            rows[row.get("run") or f"{path}:{i}"] = row
    return list(rows.values())


def config_name(row: dict) -> str:
    """``W3 per-channel``, ``W4 g64``; ``fp`` for the unquantized model."""
    if row.get("method") == "fp" or row.get("run") == "fp":
        return "fp"
    gs = row.get("group_size", -1)
    name = f"W{row['bits']}" + (f"A{row['act_bits']}" if row.get("act_bits") else "")
    name += f"KV{row['kv_bits']}" if row.get("kv_bits") else ""
    name += " " + ("per-channel" if gs in (-1, None) else f"g{gs}")
    return name + (" rotated" if row.get("rotate") == "hadamard" else "")


def _sort_key(row: dict):
    method = row.get("method", "fp")
    return (-1 if method == "fp" else row.get("bits", 32), row.get("group_size", -1) or -1,
            row.get("act_bits") or 16, row.get("rotate", "none"), METHOD_ORDER.index(method) if method in METHOD_ORDER else 99,
            row.get("run", ""))


def ppl_table(rows: list[dict], official: bool) -> str:
    """Markdown: config, run, held-out wiki ppl, C4 ppl, quantization seconds."""
    has_c4 = any("c4_ppl" in r for r in rows)
    head = "| config | run | wiki ppl | " + ("C4 ppl | " if has_c4 else "") + "quantize s |"
    lines = [head, "|---|---|---|" + ("---|" if has_c4 else "") + "---|"]
    entries = sorted(rows, key=_sort_key)
    if official:
        entries += [{"run": r, "bits": b, "group_size": g, "method": "official", "ppl": p, "quantize_s": s}
                    for r, b, g, p, s in OFFICIAL]
        entries = sorted(entries, key=lambda r: _sort_key(r)[:4])
    for r in entries:
        c4 = f"{r['c4_ppl']:.3f} | " if "c4_ppl" in r else ("- | " if has_c4 else "")
        secs = f"{r['quantize_s']:.0f}" if "quantize_s" in r else "-"
        lines.append(f"| {config_name(r)} | {r.get('run', r.get('method'))} | {r['ppl']:.3f} | {c4}{secs} |")
    return "\n".join(lines)


def plot_ppl(rows: list[dict], path: Path) -> None:
    """Perplexity vs bits, one line per method, per-channel and grouped panels, fp as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp = next((r["ppl"] for r in rows if config_name(r) == "fp"), None)
    panels = [("per-channel", lambda r: r.get("group_size", -1) in (-1, None)),
              ("grouped", lambda r: r.get("group_size", -1) not in (-1, None))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (title, keep) in zip(axes, panels):
        for method in METHOD_ORDER[1:]:
            pts = sorted((r["bits"], r["ppl"]) for r in rows if r.get("method") == method and keep(r))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        if fp is not None:
            ax.axhline(fp, color="gray", linestyle="--", label="fp")
        ax.set(title=title, xlabel="weight bits", yscale="log")
        ax.legend()
    axes[0].set_ylabel("held-out perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_throughput(rows: list[dict], path: Path) -> None:
    """Output tokens per second vs batch size, one line per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for label in dict.fromkeys(r["label"] for r in rows):
        pts = sorted((r["batch"], r["output_tok_s"]) for r in rows if r["label"] == label)
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="output tokens / s", title="vLLM decode throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(protocol: list[dict], throughput: list[dict], out: Path, official: bool = False) -> Path:
    """Write report.md, report.json and the plots into ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    parts = ["## Perplexity and quantization time", ppl_table(protocol, official)]
    if protocol:
        plot_ppl(protocol, out / "ppl_vs_bits.png")
        parts.append("![perplexity vs bits](ppl_vs_bits.png)")
    if throughput:
        parts += ["## vLLM decode throughput", offline_table(throughput), "![throughput](throughput.png)"]
        plot_throughput(throughput, out / "throughput.png")
    atomic_write_bytes(out / "report.json", json.dumps({"protocol": protocol, "throughput": throughput}, indent=2).encode())
    atomic_write_bytes(out / "report.md", ("\n\n".join(parts) + "\n").encode())
    return out / "report.md"


def main(argv: list[str] | None = None, prog: str | None = None) -> Path:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", type=Path, nargs="*", default=[])
    ap.add_argument("--throughput", type=Path, nargs="*", default=[])
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--official", action="store_true", help="add the official TurboBoA code's figures")
    a = ap.parse_args(argv)
    missing = [p for p in a.protocol + a.throughput if not p.is_file()]
    if missing:
        raise SystemExit(f"error: result file {missing[0]} does not exist; pass files written by tbq_eval.protocol/tbq_eval.throughput")
    path = write_report(read_rows(a.protocol), read_rows(a.throughput), a.out, a.official)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
