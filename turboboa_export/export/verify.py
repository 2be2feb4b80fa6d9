"""``tbq verify``: reload an export, check every tensor against its config, its export-time record (dtype, shape,
checksum) and the run: quantized linears dequantized, every other tensor in the export dtype. Tensors are read
one (or one linear's few) at a time, so a 70B checkpoint is verified in a few hundred MB."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import torch

from ..algorithms.quantized import QuantizedWeight
from ..arch import spec_for
from ..errors import TbqError
from ..plan import Scheme
from ..checkpoint import SafetensorsFiles
from ..pipeline.rundir import iter_run_weights, run_info, run_linear_names, run_rest
from ..readers import read_json_object, reading
from .compressed_tensors import EXPORT_INFO, dequantize_exported
from .manifest import record_mismatch
from .pack import packed_words


EXPORT_FIX = "re-run `tbq export` to write the checkpoint again"


def checkpoint_files(folder: Path) -> SafetensorsFiles:
    """Every tensor of every safetensors shard of ``folder`` (a stray shard's too), by name, read on demand; an
    unreadable shard is a one-line TbqError."""
    return SafetensorsFiles(sorted(Path(folder).glob("*.safetensors")), EXPORT_FIX)


def _check_records(files: SafetensorsFiles, records: dict[str, dict]) -> list[str]:
    """Every tensor against the dtype, shape and checksum written at export time; missing and extra ones."""
    keys = set(files.keys())
    problems = [f"{k}: missing from the checkpoint" for k in sorted(records.keys() - keys)]
    problems += [f"{k}: not written by the export" for k in sorted(keys - records.keys())]
    found = {k: record_mismatch(k, t, records[k]) for k, t in files.read(sorted(keys & records.keys()))}
    return problems + [found[k] for k in sorted(found) if found[k]]


def _check_rest(files: SafetensorsFiles, rest, dtype: torch.dtype) -> list[str]:
    """The run's unquantized tensors (embedding, norms, ...; (name, tensor) pairs) against the export's, in the
    export dtype."""
    found = {}
    for k, t in rest:
        want = t.to(dtype) if t.is_floating_point() else t
        got = files.get(k) if k in files else None
        if got is None:
            found[k] = f"{k}: missing from the checkpoint"
        elif got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            found[k] = f"{k}: differs from the run's (export {got.dtype} {tuple(got.shape)})"
    return [found[k] for k in sorted(found)]


def _check_shapes(tensors: dict, name: str, bits: int, sym: bool, groups_expected, dtype: torch.dtype) -> list[str]:
    problems = []
    n, k = tensors[f"{name}.weight_shape"].tolist()
    packed = tensors[f"{name}.weight_packed"]
    if packed.dtype != torch.int32 or tuple(packed.shape) != (n, packed_words(k, bits)):
        problems.append(f"{name}.weight_packed is {packed.dtype} {tuple(packed.shape)}, expected int32 {(n, packed_words(k, bits))}")
    groups = groups_expected(k)
    scale = tensors[f"{name}.weight_scale"]
    if scale.dtype != dtype or tuple(scale.shape) != (n, groups):
        problems.append(f"{name}.weight_scale is {scale.dtype} {tuple(scale.shape)}, expected {dtype} {(n, groups)}")
    zp = tensors.get(f"{name}.weight_zero_point")
    if sym and zp is not None:
        problems.append(f"{name}.weight_zero_point present in a symmetric checkpoint")
    if not sym and (zp is None or zp.dtype != torch.int32 or tuple(zp.shape) != (packed_words(n, bits), groups)):
        problems.append(f"{name}.weight_zero_point missing or not int32 {(packed_words(n, bits), groups)}")
    return problems


def _check_transform(qc: dict, info: dict, config: dict) -> list[str]:
    """The export's online Hadamard (transform_config, quant_method) is the one the run was rotated for."""
    from ..config import TransformConfig
    from .compressed_tensors import down_transform

    t = TransformConfig(**info["config"].get("transform", {}))
    if t.rotate != "hadamard":
        return ["the export has a transform_config but the run is not rotated"] if "transform_config" in qc else []
    spec = spec_for(SimpleNamespace(model_type=config.get("model_type")))  # the spec reads only the model type
    tcfg, method = down_transform(spec.down, config["intermediate_size"], t.online_block)
    if qc.get("transform_config") != tcfg or qc.get("quant_method") != method:
        return [f"transform_config/quant_method differ from the run's online rotation ({t.online_rotation})"]
    return []


def group_schemes(qc: dict) -> list[tuple[list[str], Scheme]]:
    """(targets, Scheme of the weights) of each config group of a ``quantization_config``, in order."""
    out = []
    for group in qc["config_groups"].values():
        w = group["weights"]
        out.append((group["targets"], Scheme(w["num_bits"], w["symmetric"], w.get("group_size") or -1)))
    return out


def scheme_of(name: str, groups: list[tuple[list[str], Scheme]]) -> Scheme | None:
    """The scheme a loader gives module ``name``: a group naming it (exactly or by ``re:``) before one targeting
    every ``Linear``; None when no group targets it."""
    for targets, sc in groups:
        if any(t == name or (t.startswith("re:") and re.match(t[3:], name)) for t in targets):
            return sc
    return next((sc for targets, sc in groups if "Linear" in targets), None)



def verify_export(folder: Path, run: Path | None = None) -> list[str]:
    """Problems found in a vLLM export (empty: all good). ``run`` defaults to the run recorded at export."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TbqError(f"{folder} has no config.json; pass the -o folder of `tbq export`")
    config = read_json_object(folder / "config.json", "checkpoint config", EXPORT_FIX)
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("format") != "pack-quantized":
        raise TbqError(f"{folder} is not a pack-quantized compressed-tensors checkpoint")
    from compressed_tensors.quantization import QuantizationConfig

    with reading(folder / "config.json", "the quantization_config of", EXPORT_FIX):
        QuantizationConfig.model_validate(qc)
        groups = group_schemes(qc)
        dtype = getattr(torch, config.get("dtype") or config.get("torch_dtype"))
    info = (read_json_object(folder / EXPORT_INFO, "export record", EXPORT_FIX) if (folder / EXPORT_INFO).is_file()
            else {})
    files = checkpoint_files(folder)
    names = sorted(k[: -len(".weight_packed")] for k in files.keys() if k.endswith(".weight_packed"))
    if not names:
        return ["no quantized linears (*.weight_packed) found"]
    problems = _check_records(files, info["tensors"]) if "tensors" in info else []
    schemes = {name: scheme_of(name, groups) for name in names}
    problems += [f"{name}: no config group targets it" for name, sc in schemes.items() if sc is None]
    schemes = {name: sc for name, sc in schemes.items() if sc is not None}

    def linear(name: str) -> dict[str, torch.Tensor]:  # one linear's tensors
        return dict(files.read(k for k in files.keys() if k.startswith(f"{name}.weight_")))

    for name, sc in schemes.items():
        problems += _check_shapes(linear(name), name, sc.bits, sc.sym,
                                  lambda k, gs=sc.group_size: 1 if gs == -1 else k // gs, dtype)
    if run is None and "run" in info:
        run = Path(info["run"])
    if run is not None:
        problems += _check_transform(qc, run_info(run), config)
        problems += _check_rest(files, run_rest(run), dtype)
        run_names = run_linear_names(run)
        if run_names != names:
            problems.append(f"the export has {len(names)} quantized linears, the run {len(run_names)}")
        for name, q in iter_run_weights(run):
            if name in schemes:
                # the run's weights with the scales rounded to the export dtype, as stored
                ref = QuantizedWeight(q.codes, q.scale.to(dtype).float(), q.zero, q.g_idx).dequantize()
                if not torch.equal(dequantize_exported(linear(name), name, schemes[name].bits), ref):
                    problems.append(f"{name}: dequantized weights differ from the run's")
    return problems
