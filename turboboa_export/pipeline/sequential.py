"""The layer-by-layer driver (algorithm.md section 5).

Per block: (1) its inputs in both streams are cached; (2) one statistics pass with the block's full-precision
weights runs the full-precision stream (its outputs feed the next block) and then the quantized stream,
accumulating H_in, R and the attention statistics; (3) each linear is quantized; (4) the quantized stream runs
through the now-quantized block. Held-out calibration windows (``--holdout``) run through both streams exactly as
the calibrating ones do but enter no statistic: each block's output error on them is reported beside the error on
the calibrating windows. Only the current block lives on the accelerator, and, for a model read from its folder,
only the current block's weights are in memory at all (``weights.StreamedWeights``).
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from contextlib import nullcontext
from collections.abc import Collection
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..algorithms.precision import half_products
from ..algorithms.quantized import QuantizedWeight
from ..atomic import check_output_dir, refuse_overlap
from ..arch import ArchSpec, attention_shape, spec_for
from ..calibration import calibration_batch
from ..config import QuantConfig, RunConfig
from ..errors import NumericalError, TbqError
from ..methods import get_method
from ..rotation.fuse import Rotation
from ..rotation.online import OnlineTransforms, install_configured
from ..models import load_tokenizer, local_folder, resolve_model, side_files
from ..plan import block_plan, check_plan
from .attention_check import check_attention, check_tokens, checked_layers
from .activations import activation_home, keep
from .capture import capture_inputs, run_block, to_device
from .distributed import Ranks, join, reduce_statistics, shared_linear
from .rundir import RunFollower, RunWriter
from .statistics import INPUT_OF, BlockStatistics, SecondMoments, record_inputs
from .weights import InMemoryWeights, open_model, outer_paths

log = logging.getLogger("tbq")


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TbqError(f"device {name} asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def apply_transforms(model, spec: ArchSpec, transform) -> tuple[OnlineTransforms, Rotation | None]:
    """Install the online transforms and activation quantization a run's config asks for and, for
    ``--rotate hadamard``, rotate the (loaded) embedding and return the :class:`Rotation` that the blocks and the
    head get when they are loaded (a saved run's weights are already rotated: ``rundir`` only installs the hooks)."""
    rotation = None
    if transform.rotate == "hadamard":
        rotation = Rotation(model.config, spec, transform.seed, transform.online_block)
        rotation.untie(model)
        rotation.embedding(model)
    return install_configured(model, spec, transform), rotation


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@torch.no_grad()
def collect_statistics(block, spec: ArchSpec, fp_in, q_in, kwargs, with_r: bool, attention_stats=None,
                       full_precision=nullcontext, roles: Collection[str] | None = None, device=None):
    """Statistics pass: returns (BlockStatistics, full-precision outputs, kept where the inputs are).
    ``full_precision()`` is entered for the full-precision stream (it turns activation quantization off). Second
    moments are summed only for the inputs of ``roles`` (default: every linear), the linears to be quantized.
    ``device``: where the block runs (default: where the inputs are)."""
    modules = {role: block.get_submodule(path) for role, path in spec.linears().items()}
    first_role = {}
    for role, key in INPUT_OF.items():
        if roles is None or role in roles:
            first_role.setdefault(key, role)
    home = fp_in[0].device
    device = home if device is None else device
    moments = {key: SecondMoments(modules[role].in_features, device, with_r) for key, role in first_role.items()}
    attn = attention_stats(block) if attention_stats is not None else None
    fp_out = []
    with record_inputs(modules) as seen:
        for x_fp, x_q in zip(fp_in, q_in):
            x_fp, x_q = x_fp.to(device), x_q.to(device)
            with full_precision():
                fp_out.append(keep(run_block(block, x_fp, kwargs), home))
            fp_seen = dict(seen)
            run_block(block, x_q, kwargs)
            for key, role in first_role.items():
                moments[key].add(seen[role], fp_seen[role])
            if attn is not None:
                attn.add(seen["q"], fp_seen["q"], kwargs)
    return BlockStatistics(moments, attn, half_products(x_q) is not None), fp_out


def run_stream(block, xs: list[torch.Tensor], kwargs: dict, device: torch.device) -> list[torch.Tensor]:
    """The block's outputs for the sequences ``xs``, run on ``device`` and kept where the sequences are."""
    return [keep(run_block(block, x.to(device), kwargs), x.device) for x in xs]


def set_weight(module, q: QuantizedWeight) -> None:
    module.weight.data = q.dequantize().to(module.weight.dtype)


def unseen_inputs(stats: BlockStatistics, role: str, name: str) -> int:
    """How many input channels of a linear the calibration data never excited (H_ii = 0), with a warning naming
    the module: they keep their weights, rounded on their row's grid, but nothing calibrated them."""
    n = int((torch.diagonal(stats.h(role)) == 0).sum())
    if n:
        log.warning(f"{name}: {n} input channels are zero for every calibration token; their weights are kept, "
                    "rounded to nearest (calibrate on text that excites them, e.g. with BOS, to do better)")
    return n


def quantize_linears(modules: dict, names: dict, stats: BlockStatistics, cfgs: dict[str, QuantConfig], shape, device,
                     ranks: Ranks = Ranks(), costs: dict[str, float] | None = None):
    """Quantize each linear of a block in place (its weight becomes the dequantized one), role by role with the
    role's settings ``cfgs[role]`` (its method among them); with several ``ranks``, each quantizes the linears
    ``ranks.owners`` gives it by ``costs`` (role -> the previous block's seconds; missing, a GPTQ-like FLOP
    estimate) and every rank receives every result. The roles are independent: each reads its own weight and the
    block's statistics. Returns ({name: QuantizedWeight}, per-module metrics). Raises TbqError naming the module
    when its Hessian cannot be factored."""
    if costs is None or costs.keys() != modules.keys():  # row updates and the inverse
        costs = {role: m.out_features * m.in_features ** 2 + m.in_features ** 3 for role, m in modules.items()}
    owner = ranks.owners(costs)
    mine: dict[str, tuple[QuantizedWeight, list[float]] | str] = {}
    for role, m in modules.items():
        if owner[role] != ranks.rank:
            continue
        t0 = time.time()
        try:
            result, loss = get_method(cfgs[role].method).quantize(role, m.weight.data.float(), stats, cfgs[role], shape)
        except NumericalError as e:
            mine[role] = f"cannot quantize {names[role]}: {e}"
            break  # every rank stops at this role (shared_linear raises it)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        mine[role] = result, [time.time() - t0, loss, peak_memory_bytes(device)]
    weights, metrics = {}, []
    for role, m in modules.items():
        unseen = unseen_inputs(stats, role, names[role])
        result, (seconds, loss, peak) = shared_linear(ranks, mine.get(role), owner[role])
        set_weight(m, result)
        weights[names[role]] = result
        metrics.append({"module": names[role], "role": role, "method": cfgs[role].method, "bits": cfgs[role].bits,
                        "seconds": seconds, "loss": loss,
                        "unseen_input_channels": unseen, "peak_memory_bytes": int(peak)})
    return weights, metrics


def block_rest(block, prefix: str, quantized) -> dict[str, torch.Tensor]:
    """The tensors of block ``prefix`` that are not quantized weights (norms, biases, dense linears), on the CPU."""
    skip = {f"{name}.weight" for name in quantized}
    return {f"{prefix}.{k}": v.to("cpu") for k, v in block.state_dict().items() if f"{prefix}.{k}" not in skip}


def outer_rest(model, weights, rotation: Rotation | None, spec: ArchSpec) -> dict[str, torch.Tensor]:
    """The tensors outside the blocks (embedding, final norm, lm_head unless tied), loaded now, the head rotated
    when the run rotates."""
    tied = getattr(model.config, "tie_word_embeddings", False)  # a tied lm_head is not stored
    for path in outer_paths(model, spec.layers):
        if not (tied and path == spec.lm_head):
            weights.load(model, path)
    if rotation is not None:
        rotation.head(model)
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith(f"{spec.layers}.")}
    if tied:
        rest.pop(f"{spec.lm_head}.weight", None)
    return rest


def relative_error(out, ref, ranks: Ranks = Ranks()) -> float:
    """||out - ref|| / ||ref|| over all samples (of every rank)."""
    num = sum(float((a.float() - b.float()).pow(2).sum()) for a, b in zip(out, ref))
    den = sum(float(b.float().pow(2).sum()) for b in ref)
    num, den = ranks.sum([num, den])
    return (num / den) ** 0.5


def quantize_model(config: RunConfig, out: Path, overwrite: bool = False, resume: bool = False,
                   progress: bool = True) -> Path:
    """Quantize ``config.model`` (folder, hub id or built-in name; its weights streamed from its safetensors block
    by block) with :func:`quantize_loaded` into the run folder ``out``, which may not overlap the model folder."""
    t_start = time.time()
    out = Path(out)
    check_output_dir(out, overwrite)
    resolved = resolve_model(config.model)
    if Path(resolved).exists():
        refuse_overlap(out, Path(resolved), "model")
        refuse_overlap(out.with_name(out.name + ".partial"), Path(resolved), "model")
    folder = local_folder(resolved)
    tokenizer = load_tokenizer(str(folder), config.trust_remote_code)
    model, weights = open_model(folder, config.trust_remote_code)
    return quantize_loaded(model, tokenizer, config, out, {"source": config.model, "resolved": resolved},
                           side_files(str(folder)), overwrite, resume, progress, t_start, weights)


@torch.no_grad()
def quantize_loaded(model, tokenizer, config: RunConfig, out: Path, source: dict, sources: list[Path],
                    overwrite: bool = False, resume: bool = False, progress: bool = True,
                    t_start: float | None = None, weights=None) -> Path:
    """Quantize a causal LM (eval mode) block by block and write the run to ``out``: one in memory (on CPU), or
    a skeleton whose ``weights`` (``weights.StreamedWeights``) are read part by part.

    ``tokenizer`` tokenizes the calibration text; ``source`` is recorded as run.json's ``model`` (with the
    model_type added); ``sources`` are the model folder's non-weight files copied into the run (empty: the
    tokenizer and generation config are saved by transformers). An in-memory model is changed in place: its
    linears end holding their dequantized weights (rotated, with online hooks, when the config rotates). Raises
    TbqError for settings the model cannot take (architecture, group size, patterns, fused-shard schemes)."""
    t_start = time.time() if t_start is None else t_start
    weights = InMemoryWeights() if weights is None else weights
    out = Path(out)
    check_output_dir(out, overwrite)
    spec = spec_for(model.config)
    layers = model.get_submodule(spec.layers)
    check_plan(spec, config.quant, layers)
    ranks, device = join(pick_device(config.device))
    progress = progress and ranks.lead
    shape = attention_shape(model.config)
    c = config.calib
    batch, coverage = calibration_batch(tokenizer, c.dataset, c.nsamples, c.seqlen, c.seed, c.holdout)
    report_coverage(coverage, c.seqlen, progress)
    calibrating, held = batch[: c.windows], batch[c.windows:]  # each rank: its share of each, calibrating first
    calibrating = calibrating[ranks.share(len(calibrating))]
    held = held[ranks.share(len(held), may_be_empty=True)]
    weights.load(model, spec.embed)
    checked = [weights.load(model, f"{spec.layers}.{i}") for i in checked_layers(model.config, len(layers))]
    check_attention(model, spec, batch[:1, : check_tokens(model.config, c.seqlen)])
    for block in checked:
        weights.release(block)
    transforms, rotation = apply_transforms(model, spec, config.transform)
    writer = RunWriter(out, config, overwrite=overwrite, resume=resume) if ranks.lead else None
    ranks.barrier()  # rank 0 has made the partial run that the others follow
    writer = writer or RunFollower(out, config, overwrite=overwrite, resume=resume)
    try:
        return _quantize_blocks(config, model, weights, rotation, tokenizer, spec, device, ranks, shape,
                                torch.cat([calibrating, held]), len(calibrating), transforms, writer, progress,
                                info={"model": {**source, "model_type": model.config.model_type},
                                      "calibration": coverage},
                                sources=sources, t_start=t_start)
    except TbqError:
        writer.abandon()  # these settings cannot finish: nothing to resume
        raise


def block_statistics_needs(cfgs: dict[str, QuantConfig], spec: ArchSpec, shape) -> tuple[bool, object]:
    """(whether R is needed, the attention-statistics factory or None) for a block's quantized linears, role ->
    settings: attention statistics when q, k or v uses an attention-aware method, with R when one of those does."""
    with_r = any(get_method(c.method).needs_r(c) for c in cfgs.values())
    qkv = sorted((cfgs[r] for r in ("q", "k", "v") if r in cfgs), key=lambda c: not get_method(c.method).needs_r(c))
    factories = (get_method(c.method).attention_statistics(c, spec, shape) for c in qkv)
    return with_r, next((f for f in factories if f is not None), None)


def report_coverage(coverage: dict[str, int], seqlen: int, progress: bool) -> None:
    """Say how much distinct text calibrates and how many windows are held out (progress output), and warn when
    windows repeat."""
    if progress:
        held = coverage["heldout_windows"]
        tqdm.write(f"calibration: {coverage['windows']} windows of {seqlen} tokens, {coverage['distinct_windows']} "
                   f"distinct, covering {coverage['distinct_tokens']} of the text's {coverage['text_tokens']} tokens"
                   + (f"; {held} held out ({coverage['heldout_tokens_in_calibration']} of their {held * seqlen} "
                      "tokens also in calibrating windows)" if held else ""), file=sys.stderr)
    if coverage["distinct_windows"] < coverage["windows"]:
        log.warning(f"only {coverage['distinct_windows']} of the {coverage['windows']} calibration windows are "
                    f"distinct ({coverage['distinct_tokens']} distinct tokens); add text for a better calibration")


def _quantize_blocks(config: RunConfig, model, weights, rotation: Rotation | None, tokenizer, spec: ArchSpec,
                     device, ranks: Ranks, shape, batch, n: int, transforms, writer: RunWriter, progress: bool,
                     info: dict, sources: list[Path], t_start: float) -> Path:
    """Steps (1)-(4) for every block, then the finished run (see ``quantize_model``). ``batch``: this rank's
    windows, the first ``n`` calibrating, the rest held out."""
    layers = model.get_submodule(spec.layers)
    captured = capture_inputs(model, layers, batch)
    if rotation is None:  # read again at the end; a rotated one is kept (rotating it again is a float64 product)
        weights.release(model.get_submodule(spec.embed))
    home = activation_home(device, captured.inputs)
    fp = [keep(x, home) for x in captured.inputs]
    q = [keep(x.clone(), home) for x in fp]
    dense: list[str] = []  # linears kept dense (--ignore)
    rest: dict[str, torch.Tensor] = {}  # every tensor but the quantized weights, block by block
    costs = None  # seconds of each role in the last quantized block
    t_quant = time.time()
    bar = tqdm(range(len(layers)), desc="blocks", disable=not progress)
    for i in bar:
        bar.set_description(f"({i + 1}/{len(layers)}) {'replaying' if i < writer.blocks_done else 'quantizing'}")
        block = weights.load(model, f"{spec.layers}.{i}")
        if i + 1 < len(layers):
            weights.prefetch(model, f"{spec.layers}.{i + 1}")  # read while this block computes
        if rotation is not None:
            rotation.block(block)
        block = block.to(device)
        kwargs = to_device(captured.kwargs[i], device)
        plan = {role: entry for role, entry in block_plan(spec, config.quant, i).items() if entry[1] is not None}
        modules = {role: block.get_submodule(spec.linears()[role]) for role in plan}
        full = {role: name for role, (name, _) in plan.items()}
        cfgs = {role: cfg for role, (_, cfg) in plan.items()}
        dense += [name for name, cfg in block_plan(spec, config.quant, i).values() if cfg is None]
        if i < writer.blocks_done:
            saved = writer.load_block(i)
            with transforms.act_quant_off():
                fp = run_stream(block, fp, kwargs, device)
            for role, m in modules.items():
                set_weight(m, saved[full[role]])
            q = run_stream(block, q, kwargs, device)
        else:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.time()
            with_r, attention = block_statistics_needs(cfgs, spec, shape)
            stats, fp_calibrating = collect_statistics(block, spec, fp[:n], q[:n], kwargs, with_r, attention,
                                                       transforms.act_quant_off, roles=plan, device=device)
            with transforms.act_quant_off():
                fp = fp_calibrating + run_stream(block, fp[n:], kwargs, device)
            reduce_statistics(stats, ranks)
            t_stats = time.time() - t0
            quantized, metrics = quantize_linears(modules, full, stats, cfgs, shape, device, ranks, costs)
            costs = {m["role"]: m["seconds"] for m in metrics}  # the same on every rank: balances the next block
            q = run_stream(block, q, kwargs, device)
            err = relative_error(q[:n], fp[:n], ranks)
            held = relative_error(q[n:], fp[n:], ranks) if config.calib.holdout else None
            for m in metrics:
                m.update(block=i, block_output_rel_error=err, block_output_rel_error_heldout=held,
                         block_stats_seconds=t_stats)
            bar.set_postfix({"rel_err": f"{err:.4f}", **({} if held is None else {"heldout": f"{held:.4f}"})})
            writer.save_block(i, quantized, metrics)
        if ranks.lead:  # the others write nothing
            rest.update(block_rest(block, f"{spec.layers}.{i}", full.values()))
        weights.release(block)
    if ranks.lead:
        rest.update(outer_rest(model, weights, rotation, spec))
    info["model"]["num_blocks"] = len(layers)
    path = writer.finish(rest, model, tokenizer, sources, **info, dense_linears=dense,
                         timings={"quantize_seconds": time.time() - t_quant, "total_seconds": time.time() - t_start})
    ranks.barrier()  # the run is in place for every rank
    return path
