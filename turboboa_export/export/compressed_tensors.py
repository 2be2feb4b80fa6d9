"""``tbq export --format vllm``: a compressed-tensors ``pack-quantized`` checkpoint that stock vLLM loads.

Per quantized linear ``p``: ``p.weight_packed`` (int32 [N, ceil(K b/32)], codes packed along K),
``p.weight_scale`` ([N, groups], model dtype), ``p.weight_shape`` (int64 [N, K]), for asymmetric grids
``p.weight_zero_point`` (int32 [ceil(N b/32), groups], packed along N) and, with act-order groups,
``p.weight_g_idx``. Stored integers are signed (q - 2^(b-1)); packing adds 2^(b-1) back, so tbq's unsigned codes
and zeros are packed as they are. Dequantization: (q - zp) * scale.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from ..algorithms.quantized import QuantizedWeight, contiguous_g_idx
from ..arch import ArchSpec, spec_for
from ..atomic import check_output_dir, refuse_overlap, replace_dir
from ..config import TransformConfig
from ..errors import TbqError
from ..plan import Scheme
from ..pipeline.rundir import RUN_FIX, iter_run_weights, run_info, run_linear_names, run_rest, side_files_of_run
from ..readers import reading
from .manifest import tensor_record
from ..vllm_plugin import ACT_CLIP_KEY, ENTRY_POINT, HADACORE_MIN, PLUGIN_QUANT_METHOD, TBQ_HADAMARD
from .pack import pack_rows, unpack_rows

VLLM_GROUP_SIZES = (-1, 32, 64, 128)
SHARD_BYTES = 4 * 2**30
EXPORT_INFO = "tbq_export.json"
DOWN_TRANSFORM = "tbq_down_hadamard"


def check_vllm_support(bits: int, sym: bool, group_size: int) -> None:
    """Refuse what stock vLLM 0.25 cannot serve, saying what to choose instead."""
    if bits in (2, 3) and not sym:
        raise TbqError(f"vLLM 0.25 serves {bits}-bit weights only symmetric; re-quantize with --sym, or export --format hf")
    if group_size not in VLLM_GROUP_SIZES:
        raise TbqError(
            f"group size {group_size} is not served by vLLM's kernels (32, 64, 128 or -1 per channel); "
            "re-quantize with one of those, or export --format hf"
        )


PLUGIN_PROBE = ("import sys; from importlib.metadata import entry_points; "
                "sys.exit(0 if any(e.value == {!r} for e in entry_points(group='vllm.general_plugins')) else 1)")


def check_vllm_servable(checkpoint: Path, vllm_python: str | None = None) -> None:
    """Refuse, in one line, ``quant_method: tbq`` checkpoints (derived online Hadamards, W4A4/W4A8) when the vLLM
    in ``vllm_python`` lacks tbq's plugin."""
    import subprocess

    qcfg = json.loads((Path(checkpoint) / "config.json").read_text()).get("quantization_config", {})
    if qcfg.get("quant_method") == PLUGIN_QUANT_METHOD and vllm_python is not None:
        probe = subprocess.run([vllm_python, "-c", PLUGIN_PROBE.format(ENTRY_POINT)], capture_output=True)
        if probe.returncode != 0:
            needs = ("integer activations (W4A4/W4A8)" if PLUGIN_QUANT_METHOD in qcfg
                     else "its online Hadamard is a tbq-hadamard transform")
            fix = "" if PLUGIN_QUANT_METHOD in qcfg else " or re-quantize with --online-rotation block:B for stock vLLM"
            raise TbqError(f"{checkpoint} needs tbq's vLLM plugin ({needs}), which {vllm_python} does not have; "
                           f"install tbq there (`{vllm_python} -m pip install tbq`){fix}")


def check_int_act_exportable(schemes: dict[str, Scheme], act_order: bool, run: Path) -> None:
    """W4A4/W4A8 exports are served by tbq's plugin on int8 tensor cores: symmetric int4 weights without act-order."""
    for sc in set(schemes.values()):
        if sc.bits != 4 or not sc.sym:
            raise TbqError(f"run {run} has {sc.bits}-bit {'symmetric' if sc.sym else 'asymmetric'} weights with "
                           "integer activations, which tbq's vLLM plugin does not serve; re-quantize with --bits 4 --sym")
        if sc.group_size not in (-1, 32, 64, 128):
            raise TbqError(f"run {run} has group size {sc.group_size} with integer activations; re-quantize with "
                           "--group-size -1 (per channel), 32, 64 or 128")
    if act_order and any(sc.group_size != -1 for sc in schemes.values()):  # act-order groups store a g_idx
        raise TbqError(f"run {run} uses act-order groups with integer activations, which tbq's vLLM plugin does not "
                       "serve; re-quantize without --act-order")


def check_dense_exportable(info: dict, run: Path) -> None:
    """A dense checkpoint cannot carry the online transforms or activation/KV quantization of a transformed run."""
    t = info["config"].get("transform", {})
    if t.get("rotate", "none") != "none" or t.get("act_bits") or t.get("kv_bits"):
        raise TbqError(f"run {run} is rotated or activation/KV-quantized, which a dense checkpoint cannot express; "
                       "export it with --format vllm")


def down_transform(spec_down: str, n: int, block: int | None) -> tuple[dict, str]:
    """The compressed-tensors ``transform_config`` for the online Hadamard on down_proj's input (width ``n``) and the
    ``quant_method`` that serves it; no tensors: every Hadamard here is derived, none is stored.

    - ``block`` B (or the full H_n when n is a power of two): type ``hadamard`` (Sylvester, ``head_dim`` B for the
      block-diagonal I kron S_B / sqrt(B)), which stock vLLM applies with its Hadacore kernel: ``compressed-tensors``
      when B >= HADACORE_MIN (smaller, vLLM 0.25.1's Hadacore miscomputes some token counts: ``tbq``);
    - full H_n = (H_m kron S_p) / sqrt(n), m > 1: type ``tbq-hadamard`` (H_m is tbq's shipped base of order m).
    ``quant_method: tbq`` checkpoints are served by tbq's vLLM plugin only; stock vLLM refuses them ("Unknown
    quantization method") instead of applying an uninitialized matrix or a faulty kernel."""
    from compressed_tensors.transform import TransformArgs, TransformConfig, TransformScheme

    from ..rotation.hadamard import factor

    m = factor(n)[0] if block is None else 1
    size = n if block is None else block  # the Sylvester size when m = 1
    kind, head_dim = ("hadamard", None if size == n else size) if m == 1 else (TBQ_HADAMARD, None)
    scheme = TransformScheme(type=kind, head_dim=head_dim,
                             apply=[TransformArgs(targets=[f"re:.*{spec_down}$"], location="input")])
    config = TransformConfig(config_groups={DOWN_TRANSFORM: scheme}).model_dump(mode="json")
    stock = m == 1 and size >= HADACORE_MIN
    return config, ("compressed-tensors" if stock else PLUGIN_QUANT_METHOD)


def quantization_config(schemes: dict[str, Scheme], act_order: set[str], act_bits: int | None = None,
                        transform: tuple[dict, str] | None = None, ignore: list[str] | tuple[str, ...] = (),
                        act_clip: float | None = None) -> dict:
    """The ``quantization_config`` block, built with compressed-tensors' own models. ``schemes``: quantized module
    name -> Scheme; one config group per distinct scheme, targeting ``Linear`` when there is one and the exact
    module names otherwise; ``act_order``: the modules stored with act-order groups (``weight_g_idx``); ``act_bits``
    adds dynamic per-token symmetric input activations (W4A4/W4A8, with their clip ratio ``act_clip`` under
    ``tbq.act_clip``; served by tbq's plugin only: ``quant_method: tbq``); ``transform`` is a (``transform_config``,
    ``quant_method``) pair from :func:`down_transform`; ``ignore``: dense linears besides lm_head."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    by_scheme: dict[Scheme, list[str]] = {}
    for name, sc in schemes.items():
        by_scheme.setdefault(sc, []).append(name)
    acts = None if act_bits is None else QuantizationArgs(num_bits=act_bits, type="int", symmetric=True,
                                                          strategy="token", dynamic=True)
    groups = {}
    for i, (sc, names) in enumerate(by_scheme.items()):
        args = QuantizationArgs(
            num_bits=sc.bits, type="int", symmetric=sc.sym, strategy="channel" if sc.group_size == -1 else "group",
            group_size=None if sc.group_size == -1 else sc.group_size,
            actorder="group" if sc.group_size != -1 and act_order & set(names) else None, dynamic=False,
        )
        targets = ["Linear"] if len(by_scheme) == 1 else sorted(names)
        groups[f"group_{i}"] = QuantizationScheme(targets=targets, weights=args, input_activations=acts)
    cfg = QuantizationConfig(config_groups=groups, quant_method="compressed-tensors", format="pack-quantized",
                             quantization_status="compressed", ignore=["lm_head", *ignore])
    # keys left at None are dropped so that older compressed-tensors (vLLM 0.25 pins 0.17) accept the config
    out = cfg.model_dump(exclude_none=True)
    if transform is not None:
        out["transform_config"], out["quant_method"] = transform
    if act_bits is not None:
        out["quant_method"] = PLUGIN_QUANT_METHOD
        out[PLUGIN_QUANT_METHOD] = {ACT_CLIP_KEY: act_clip}
    return out


def linear_tensors(name: str, q: QuantizedWeight, bits: int, sym: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one quantized linear."""
    n, k = q.codes.shape
    out = {
        f"{name}.weight_packed": pack_rows(q.codes.long(), bits),
        f"{name}.weight_scale": q.scale.to(dtype),
        f"{name}.weight_shape": torch.tensor([n, k], dtype=torch.int64),
    }
    if not sym:
        out[f"{name}.weight_zero_point"] = pack_rows(q.zero.T.long(), bits).T.contiguous()
    if has_act_order(q):
        out[f"{name}.weight_g_idx"] = q.g_idx.to(torch.int32)
    return out


def has_act_order(q: QuantizedWeight) -> bool:
    """Whether the weight's groups are not consecutive column blocks (act-order: ``weight_g_idx`` is stored)."""
    g = q.g_idx.long()
    return not torch.equal(g, torch.sort(g).values)


def dequantize_exported(tensors: dict[str, torch.Tensor], name: str, bits: int) -> torch.Tensor:
    """(q - zp) * scale of one exported linear, in float32, read back from its packed tensors."""
    n, k = tensors[f"{name}.weight_shape"].tolist()
    codes = unpack_rows(tensors[f"{name}.weight_packed"], bits, k)
    scale = tensors[f"{name}.weight_scale"].float()
    zp_key = f"{name}.weight_zero_point"
    zero = (unpack_rows(tensors[zp_key].T.contiguous(), bits, n).T if zp_key in tensors
            else torch.full_like(scale, 2 ** (bits - 1)))
    groups = scale.shape[1]
    g = tensors.get(f"{name}.weight_g_idx", contiguous_g_idx(k, -1 if groups == 1 else k // groups)).long()
    return scale[:, g] * (codes - zero[:, g]).float()


def export_dtype(model_dtype: torch.dtype, spec: ArchSpec) -> torch.dtype:
    """vLLM's kernels take fp16 or bf16: a half-precision model keeps its dtype, a float32 one gets its family's
    half dtype (bf16 where fp16 is unsafe, e.g. Gemma 3, whose activations overflow fp16 and which vLLM refuses in fp16)."""
    return model_dtype if model_dtype in (torch.float16, torch.bfloat16) else getattr(torch, spec.half_dtype)


def save_sharded(tensors: Iterable[tuple[str, torch.Tensor]], folder: Path) -> None:
    """safetensors shards of at most SHARD_BYTES from (name, tensor) pairs, filled in the order given and each
    written as soon as it is full (one shard in memory at a time), with an index when there is more than one."""
    shards: list[list[str]] = []  # the names in each shard written so far
    current: dict[str, torch.Tensor] = {}
    size = total = 0
    for key, t in chain(tensors, [(None, None)]):  # None: the end
        nbytes = 0 if t is None else t.numel() * t.element_size()
        if current and (t is None or size + nbytes > SHARD_BYTES):
            save_file(current, folder / f".shard-{len(shards)}", metadata={"format": "pt"})
            shards.append(list(current))
            current, size = {}, 0
        if t is not None:
            current[key] = t.contiguous()
            size, total = size + nbytes, total + nbytes
    if len(shards) == 1:
        os.replace(folder / ".shard-0", folder / "model.safetensors")
        return
    weight_map = {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(folder / f".shard-{i}", folder / fname)
        weight_map.update(dict.fromkeys(names, fname))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def copy_side_files(run: Path, out: Path) -> None:
    """The model folder's non-weight files (tokenizer, chat template, generation config, ...), byte for byte as the
    run holds them, over whatever transformers wrote there."""
    for f in side_files_of_run(run):
        shutil.copy2(f, out / f.name)


def write_atomically(out: Path, overwrite: bool, fill, source: Path | None = None) -> Path:
    """Create ``out`` by filling a temp folder beside it and renaming it into place; ``source`` (the run being
    exported) may be neither ``out`` nor inside or around it."""
    out = Path(out)
    if source is not None:
        refuse_overlap(out, source, "run")
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        return replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recorded(tensors: Iterable[tuple[str, torch.Tensor]], records: dict[str, dict]) -> Iterator[tuple[str, torch.Tensor]]:
    """The pairs of ``tensors`` as they come, each one's :func:`manifest.tensor_record` added to ``records``."""
    for key, t in tensors:
        records[key] = tensor_record(t)
        yield key, t


def write_vllm_checkpoint(out: Path, weights: Iterable[tuple[str, QuantizedWeight]],
                          rest: Iterable[tuple[str, torch.Tensor]], config, schemes: dict[str, Scheme], info: dict,
                          side_files: Path | None = None, overwrite: bool = False, act_bits: int | None = None,
                          transform: tuple[dict, str] | None = None, ignore: list[str] | tuple[str, ...] = (),
                          card: Callable[[Path], str] | None = None, act_clip: float | None = None) -> Path:
    """Write quantized linears plus the other tensors as a pack-quantized checkpoint at ``out`` (atomically).
    ``weights`` and ``rest`` are (name, tensor) pairs, consumed once, in order, so that they may be read as they are
    written. ``config`` is the model's transformers config; ``schemes`` each quantized linear's Scheme; ``side_files`` the
    run whose model-folder files are copied; ``act_bits`` declares dynamic per-token activations (clip ratio
    ``act_clip``); ``transform`` is
    :func:`down_transform`'s pair; ``ignore`` the linears kept dense (their weights are in ``rest``); ``card``
    gives the README.md of the checkpoint from its final path."""
    for sc in sorted(set(schemes.values())):
        check_vllm_support(sc.bits, sc.sym, sc.group_size)
    dtype = export_dtype(getattr(config, "dtype", None) or torch.float32, spec_for(config))

    act_order: set[str] = set()

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name, w in weights:
            part = linear_tensors(name, w, schemes[name].bits, schemes[name].sym, dtype)
            if f"{name}.weight_g_idx" in part:
                act_order.add(name)
            yield from part.items()
        for key, t in rest:
            yield key, t.to(dtype) if t.is_floating_point() else t

    def fill(tmp: Path) -> None:
        records: dict[str, dict] = {}
        save_sharded(recorded(tensors(), records), tmp)
        records = dict(sorted(records.items()))
        config.dtype = dtype
        config.quantization_config = quantization_config(schemes, act_order, act_bits, transform, ignore,
                                                          act_clip)
        config.save_pretrained(tmp)
        if side_files is not None:
            copy_side_files(side_files, tmp)
        if card is not None:
            (tmp / "README.md").write_text(card(Path(out)))
        uniform = len(set(schemes.values())) == 1
        sc = next(iter(schemes.values()))
        (tmp / EXPORT_INFO).write_text(json.dumps({**info, "format": "vllm", "dtype": str(dtype),
                                                   **({"bits": sc.bits, "sym": sc.sym, "group_size": sc.group_size}
                                                      if uniform else {}),
                                                   "tensors": records}, indent=2))

    return write_atomically(out, overwrite, fill, side_files)


def run_schemes(info: dict, names) -> tuple[dict[str, Scheme], list[str]]:
    """(quantized module name -> Scheme, the linears the run kept dense) from a run's recorded settings."""
    from ..config import RunConfig
    from ..plan import layer_config, scheme

    quant = RunConfig(**info["config"]).quant
    schemes = {name: scheme(layer_config(quant, name)) for name in names}
    return schemes, info.get("dense_linears", [])


def export_vllm(run: Path, out: Path, overwrite: bool = False) -> Path:
    """Write the run as a compressed-tensors pack-quantized checkpoint at ``out``, with a model card."""
    from transformers import AutoConfig

    from .card import model_card

    run = Path(run)
    info = run_info(run)
    t = info["config"].get("transform", {})
    schemes, dense = run_schemes(info, run_linear_names(run))
    for sc in sorted(set(schemes.values())):
        check_vllm_support(sc.bits, sc.sym, sc.group_size)
    if t.get("act_bits"):
        check_int_act_exportable(schemes, info["config"]["quant"].get("act_order", False), run)
    if t.get("kv_bits"):
        raise TbqError(f"run {run} fake-quantizes the KV cache to int{t['kv_bits']}, which stock vLLM cannot express; "
                       "quantize without --kv-bits to export")
    with reading(run / "config.json", "run file", RUN_FIX):
        config = AutoConfig.from_pretrained(run)
    transform = None
    if t.get("rotate", "none") == "hadamard":
        block = TransformConfig(**t).online_block
        transform = down_transform(spec_for(config).down, config.intermediate_size, block)
    info_out = {"run": str(run.resolve()), **({"act_clip": t["act_clip"]} if t.get("act_bits") else {})}
    quant_method = PLUGIN_QUANT_METHOD if t.get("act_bits") else transform[1] if transform else "compressed-tensors"
    return write_vllm_checkpoint(out, iter_run_weights(run), run_rest(run), config, schemes, info_out, run, overwrite,
                                 t.get("act_bits"), transform, dense,
                                 lambda final: model_card(run, info, "vllm", final, quant_method), t.get("act_clip"))


def export_hf(run: Path, out: Path, overwrite: bool = False) -> Path:
    """Write the run's dequantized weights (in its model's dtype) as a dense Hugging Face checkpoint, with the model
    folder's other files (tokenizer, generation config, ...) as the run holds them, and a model card; one block's
    weights are in memory at a time."""
    from transformers import AutoConfig, GenerationConfig

    from .card import model_card

    run = Path(run)
    refuse_overlap(out, run, "run")
    info = run_info(run)
    check_dense_exportable(info, run)
    with reading(run / "config.json", "run file", RUN_FIX):
        config = AutoConfig.from_pretrained(run)
    dtype = config.dtype or torch.float32

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name, q in iter_run_weights(run):
            yield f"{name}.weight", q.dequantize().to(dtype)
        for key, t in run_rest(run):
            yield key, t.to(dtype) if t.is_floating_point() else t

    def fill(tmp: Path) -> None:
        save_sharded(tensors(), tmp)
        config.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)  # what save_pretrained writes; a run's own wins
        copy_side_files(run, tmp)
        (tmp / "README.md").write_text(model_card(run, info, "hf", Path(out), None))
        (tmp / EXPORT_INFO).write_text(json.dumps({"run": str(run.resolve()), "format": "hf"}, indent=2))

    return write_atomically(out, overwrite, fill, run)


FORMATS: dict[str, Callable[[Path, Path, bool], Path]] = {"vllm": export_vllm, "hf": export_hf}


def export_run(run: Path, format: str, out: Path, overwrite: bool = False) -> Path:
    """Export ``run`` to ``out`` in ``format`` (a key of FORMATS); an unknown format is a one-line TbqError."""
    if format not in FORMATS:
        raise TbqError(f"unknown export format {format!r}; choose {' or '.join(FORMATS)}")
    return FORMATS[format](Path(run), Path(out), overwrite)
