"""``tbq verify``: reload an export, check every tensor against its config, compare with the run's weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..algorithms.quantized import QuantizedWeight
from ..errors import TbqError
from ..pipeline.rundir import load_run
from .compressed_tensors import EXPORT_INFO, dequantize_exported
from .pack import packed_words


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


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
    tcfg, method = down_transform(spec_for_dict(config).down, config["intermediate_size"], t.online_block)
    if qc.get("transform_config") != tcfg or qc.get("quant_method") != method:
        return [f"transform_config/quant_method differ from the run's online rotation ({t.online_rotation})"]
    return []


def spec_for_dict(config: dict):
    """The ArchSpec of a config.json's contents."""
    from transformers import AutoConfig

    from ..arch import spec_for

    return spec_for(AutoConfig.for_model(**config))


def verify_export(folder: Path, run: Path | None = None) -> list[str]:
    """Problems found in a vLLM export (empty: all good). ``run`` defaults to the run recorded at export."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TbqError(f"{folder} has no config.json; pass the -o folder of `tbq export`")
    config = json.loads((folder / "config.json").read_text())
    qc = config.get("quantization_config")
    if not qc or qc.get("format") != "pack-quantized":
        raise TbqError(f"{folder} is not a pack-quantized compressed-tensors checkpoint")
    from compressed_tensors.quantization import QuantizationConfig

    QuantizationConfig.model_validate(qc)
    w = qc["config_groups"]["group_0"]["weights"]
    bits, sym, gs = w["num_bits"], w["symmetric"], w.get("group_size") or -1
    dtype = getattr(torch, config.get("dtype") or config.get("torch_dtype"))
    tensors = load_tensors(folder)
    names = sorted(k[: -len(".weight_packed")] for k in tensors if k.endswith(".weight_packed"))
    if not names:
        return ["no quantized linears (*.weight_packed) found"]
    problems = []
    for name in names:
        problems += _check_shapes(tensors, name, bits, sym, lambda k: 1 if gs == -1 else k // gs, dtype)
    if run is None and (folder / EXPORT_INFO).is_file():
        run = Path(json.loads((folder / EXPORT_INFO).read_text())["run"])
    if run is not None:
        info, weights = load_run(run)
        problems += _check_transform(qc, info, config)
        if sorted(weights) != names:
            problems.append(f"the export has {len(names)} quantized linears, the run {len(weights)}")
        for name in names:
            if name in weights:
                q = weights[name]
                # the run's weights with the scales rounded to the export dtype, as stored
                ref = QuantizedWeight(q.codes, q.scale.to(dtype).float(), q.zero, q.g_idx).dequantize()
                if not torch.equal(dequantize_exported(tensors, name, bits), ref):
                    problems.append(f"{name}: dequantized weights differ from the run's")
    return problems
