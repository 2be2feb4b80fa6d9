"""``tbq``: builds a configuration from flags and calls the library; no math here."""

from __future__ import annotations

import json
import logging
import sys
from functools import wraps
from pathlib import Path
from typing import Optional

import typer

from turboboa_export.errors import TbqError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="TurboBoA quantization for LLMs, exported to vLLM.")


def one_line_errors(fn):
    """Print a TbqError as one line on stderr and exit 2."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TbqError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@one_line_errors
def quantize(
    model: str = typer.Argument(..., help="Model folder, hub id, or built-in name (smollm2-135m, gemma3-270m)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run directory to write."),
    preset: Optional[str] = typer.Option(None, help="Named preset: w4-g128, w4-g64, w4, w3-g128, w3-g64, w3, w2, w8."),
    config: Optional[Path] = typer.Option(
        None, "--config", help='JSON file with quant/calib/transform settings and per-layer "rules": [{"pattern": '
                               '"re:.*down_proj$", "bits": 8, "group_size": 128, "sym": true, "method": "gptq"}] '
                               '(first match wins).'),
    ignore: Optional[list[str]] = typer.Option(
        None, "--ignore", help="Keep linears matching this pattern dense (repeatable; glob or re:REGEX on full module "
                               "names like model.layers.0.mlp.down_proj)."),
    method: Optional[str] = typer.Option(None, help="rtn | gptq | boa | turboboa (default turboboa)."),
    bits: Optional[int] = typer.Option(None, help="Weight bits: 2, 3, 4 or 8 (default 4)."),
    group_size: Optional[int] = typer.Option(None, help="Columns per group, -1 for per channel (default -1)."),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="Symmetric grid (default asymmetric; symmetric with --act-bits)."),
    grid: Optional[str] = typer.Option(None, help="Grid search: minmax | mse | hessian (default minmax for rtn, hessian otherwise)."),
    damp: Optional[float] = typer.Option(None, help="Hessian damping, fraction of mean diag (default 0.01)."),
    sample_damp: Optional[float] = typer.Option(
        None, help="Damping added per input width per calibration token: a Hessian of width d from T tokens is damped "
                   "by damp + sample_damp * d / T of its mean diag (default 0.25; 0: the fixed --damp)."),
    act_order: Optional[bool] = typer.Option(None, "--act-order/--no-act-order", help="Column act-order."),
    row_act_order: Optional[bool] = typer.Option(None, "--row-act-order/--no-row-act-order", help="Row act-order (BoA/TurboBoA)."),
    rows: Optional[int] = typer.Option(None, help="TurboBoA rows quantized jointly, N (default 16)."),
    alpha: Optional[float] = typer.Option(None, help="TurboBoA propagated-error weight (default 0.25; 0 off)."),
    refine_iters: Optional[int] = typer.Option(None, help="TurboBoA scale refinement passes (default 1; 0 off)."),
    adaptive_grid: Optional[bool] = typer.Option(None, "--adaptive-grid/--fixed-grid", help="Grid of each row block from its current weights (TurboBoA F3; default on for turboboa, off for boa, whose official grid is fixed up front)."),
    centred_keys: Optional[bool] = typer.Option(None, "--centred-keys/--plain-keys", help="BoA/TurboBoA: q's H_out from the key covariance centred by each query's attention, which the softmax sees (default off: the paper's plain covariance)."),
    dataset: Optional[str] = typer.Option(None, help="exl2-wiki, exl2-c4, wikitext2, c4, or a .txt/.jsonl path."),
    nsamples: Optional[int] = typer.Option(None, help="Calibration windows (default 128)."),
    holdout: Optional[int] = typer.Option(
        None, help="The last N of the --nsamples windows enter no statistic; each block's output error on them is "
                   "reported beside the calibration error (default 2 when --nsamples >= 8, else 0)."),
    seqlen: Optional[int] = typer.Option(None, help="Tokens per window (default 2048)."),
    seed: Optional[int] = typer.Option(None, help="Calibration seed (default 0)."),
    rotate: Optional[str] = typer.Option(None, help="none | hadamard: QuaRot rotation before quantizing (default none)."),
    online_rotation: Optional[str] = typer.Option(
        None, help="With --rotate hadamard, down_proj's online Hadamard: full (H_n; needs tbq's vLLM plugin unless n is "
                   "a power of two >= 512) | block:B (Sylvester blocks of size B; stock vLLM for B >= 512 at TP=1, "
                   "tbq's plugin otherwise and at TP > 1 when B divides each rank's share)."),
    act_bits: Optional[int] = typer.Option(None, help="Quantize linear inputs per token to 4 or 8 bits (W4A4/W4A8, served by tbq's vLLM plugin)."),
    act_clip: Optional[float] = typer.Option(None, help="Activation clip ratio in (0, 1] (default 0.9)."),
    kv_bits: Optional[int] = typer.Option(None, help="Fake-quantize keys and values per token and head to 4 or 8 bits."),
    rotation_seed: Optional[int] = typer.Option(None, help="Seed of the random Hadamard (default 0)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N] (default auto)."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Processes, one per GPU (cuda:0..N-1; with --device cpu, CPU "
                                                      "processes): calibration split, linears spread over them."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the model folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty output directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last finished block."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Quantize MODEL block by block and write the run to -o."""
    import os

    if gpus > 1 and "RANK" not in os.environ:  # inside the launched ranks, RANK is set
        from turboboa_export.launch import launch

        if "quantize" not in sys.argv[1:]:
            raise TbqError("--gpus relaunches the tbq command line, and there is none here; run `tbq quantize ... "
                           "--gpus N` or torchrun --nproc-per-node N -m tbq_cli.main quantize ...")
        raise typer.Exit(launch(sys.argv[1:], gpus))
    from turboboa_export.config import build_config
    from turboboa_export.pipeline.sequential import quantize_model

    cfg = build_config(
        model, preset=preset, config_file=config,
        quant=dict(method=method, bits=bits, group_size=group_size, sym=sym, grid=grid, damp=damp,
                   sample_damp=sample_damp, act_order=act_order, row_act_order=row_act_order, rows=rows, alpha=alpha,
                   refine_iters=refine_iters, adaptive_grid=adaptive_grid, centred_keys=centred_keys, ignore=tuple(ignore or ()) or None),
        calib=dict(dataset=dataset, nsamples=nsamples, seqlen=seqlen, seed=seed, holdout=holdout),
        transform=dict(rotate=rotate, online_rotation=online_rotation, act_bits=act_bits, act_clip=act_clip,
                       kv_bits=kv_bits, seed=rotation_seed),
        device=device, trust_remote_code=trust_remote_code or None,
    )
    path = quantize_model(cfg, output, overwrite=overwrite, resume=resume, progress=not quiet)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"wrote {path}")


@app.command()
@one_line_errors
def inspect(run: Path = typer.Argument(..., help="A run directory written by `tbq quantize`.")):
    """Print a summary of a run."""
    from turboboa_export.pipeline.rundir import run_info, run_linear_names

    info = run_info(run)
    q = info["config"]["quant"]
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    group = "per-channel" if q["group_size"] == -1 else f"g{q['group_size']}"
    typer.echo(f"model      {info['model']['source']} ({info['model']['model_type']}, {info['model']['num_blocks']} blocks)")
    typer.echo(f"method     {q['method']} W{q['bits']} {group} {'sym' if q['sym'] else 'asym'}, grid {q['grid']}")
    typer.echo(f"calib      {json.dumps(info['config']['calib'])}")
    typer.echo(f"linears    {len(run_linear_names(run))} quantized")
    typer.echo(f"time       {info['timings']['quantize_seconds']:.1f} s quantizing")
    if metrics:
        last = max(m["block"] for m in metrics)
        m = next(m for m in metrics if m["block"] == last)
        held = m.get("block_output_rel_error_heldout")  # runs before issue 20 hold no held-out windows
        typer.echo(f"last block output relative error vs full precision: {m['block_output_rel_error']:.4f}"
                   + ("" if held is None else f" (held-out windows: {held:.4f})"))


@app.command()
@one_line_errors
def export(
    run: Path = typer.Argument(..., help="A run directory written by `tbq quantize`."),
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint directory to write."),
    format: str = typer.Option("vllm", "--format", help="vllm (compressed-tensors pack-quantized) | hf (dense)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty output directory."),
):
    """Export a run as a checkpoint: compressed-tensors for vLLM, or dense dequantized weights."""
    from turboboa_export.export.compressed_tensors import export_run

    typer.echo(f"wrote {export_run(run, format, output, overwrite)}")


@app.command()
@one_line_errors
def verify(
    folder: Path = typer.Argument(..., help="A folder written by `tbq export --format vllm`."),
    run: Optional[Path] = typer.Option(None, "--run", help="The run to compare with (default: the one exported)."),
):
    """Check an export's tensors against its config and the run's weights; exit 1 on any mismatch."""
    from turboboa_export.export.verify import verify_export

    problems = verify_export(folder, run)
    for p in problems:
        typer.echo(f"mismatch: {p}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: {folder}")


eval_app = typer.Typer(no_args_is_help=True, help="Evaluation tools; each takes its own arguments "
                                                    "(`tbq eval TOOL --help`), as `python -m tbq_eval.TOOL` does.")
app.add_typer(eval_app, name="eval")

EVAL_TOOLS = {  # command: (module of tbq_eval, one-line help)
    "ppl": ("ppl", "Held-out perplexity of a run (PyTorch, fake-quant) or an export (--backend vllm)."),
    "vllm-ppl": ("vllm_ppl", "An export's perplexity through vLLM beside its run's through PyTorch."),
    "zeroshot": ("zeroshot", "Zero-shot accuracy through lm-evaluation-harness (hf or vllm backend)."),
    "throughput": ("throughput", "vLLM decode tokens/s: offline (checkpoints side by side) or serve (a server URL)."),
    "protocol": ("protocol", "The algorithm.md section 8 protocol: quantize and evaluate a list of runs."),
    "report": ("report", "Tables and plots from protocol/throughput JSON."),
    "random-checkpoint": ("random_checkpoint", "A checkpoint with a real model's shapes and random weights."),
}


def _eval_command(name: str, module: str, help: str):
    """``tbq eval NAME ARGS...`` runs ``tbq_eval.MODULE.main(ARGS)``: every argument, --help included, goes to the
    tool's own parser."""

    @eval_app.command(name, help=help, add_help_option=False,
                      context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def command(ctx: typer.Context):
        import importlib

        importlib.import_module(f"tbq_eval.{module}").main(list(ctx.args), prog=f"tbq eval {name}")

    return command


for _name, (_module, _help) in EVAL_TOOLS.items():
    _eval_command(_name, _module, _help)


def main() -> None:
    """Entry point: warnings of the library (logger ``tbq``) as ``warning: ...`` lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logging.getLogger("tbq").addHandler(handler)
    app()


if __name__ == "__main__":
    sys.exit(main())
