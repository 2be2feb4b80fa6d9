"""The Python API: quantize a model (a folder, hub id, built-in name, or a transformers model in memory) into a
run, export the run, load it back as a fake-quantized model. Heavy imports happen inside the functions.

    from turboboa_export import quantize
    run = quantize("smollm2-135m", output="runs/demo", method="gptq", bits=4, group_size=64, nsamples=8)
    run.export("vllm", "runs/demo-vllm")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .algorithms.quantized import QuantizedWeight
    from .config import RunConfig

TRANSFORM_ALIASES = {"rotation_seed": "seed"}  # flat names that differ from the TransformConfig field


@dataclass(frozen=True)
class Run:
    """A finished run folder: ``path`` and its ``run.json`` as ``info`` (config, versions, model, timings)."""

    path: Path
    info: dict

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """The finished run at ``path``; TbqError when it is not one (or not complete)."""
        from .pipeline.rundir import RUN_FIX, load_run
        from .readers import read_json_object

        load_run(path)  # refuses what is not a complete run
        return cls(Path(path), read_json_object(Path(path) / "run.json", "run file", RUN_FIX))

    @property
    def weights(self) -> dict[str, "QuantizedWeight"]:
        """Module name -> codes, scales, zeros and g_idx of every quantized linear (read from the run folder)."""
        from .pipeline.rundir import load_run

        return load_run(self.path)[1]

    def export(self, format: str, out: str | Path, overwrite: bool = False) -> Path:
        """:func:`export` of this run."""
        return export(self, format, out, overwrite)


def _sections(settings: dict[str, Any]) -> dict[str, dict]:
    """Flat settings (the CLI's names with underscores: ``bits``, ``nsamples``, ``rotation_seed``, ``device``, ...)
    sorted into build_config's quant / calib / transform / run keyword groups; an unknown name is a TbqError."""
    from .config import CalibConfig, QuantConfig, TransformConfig
    from .errors import TbqError

    out: dict[str, dict] = {"quant": {}, "calib": {}, "transform": {}, "run": {}}
    for key, value in settings.items():
        if key in QuantConfig.model_fields:
            out["quant"][key] = value
        elif key in CalibConfig.model_fields:
            out["calib"][key] = value
        elif key in TRANSFORM_ALIASES or (key in TransformConfig.model_fields and key != "seed"):
            out["transform"][TRANSFORM_ALIASES.get(key, key)] = value
        elif key in ("device", "trust_remote_code"):
            out["run"][key] = value
        else:
            raise TbqError(f"unknown setting {key!r}; pass the CLI's option names with underscores "
                           "(bits, group_size, nsamples, rotation_seed, ...)")
    return out


def _build(model: str, config: "RunConfig | dict | None", settings: dict[str, Any]) -> "RunConfig":
    from .config import RunConfig, build_config

    data = config.model_dump(mode="json", exclude={"model"}) if isinstance(config, RunConfig) else config
    s = _sections(settings)
    return build_config(model, config_data=data, quant=s["quant"], calib=s["calib"], transform=s["transform"],
                        **s["run"])


def quantize(model_or_path: Any, config: "RunConfig | dict | None" = None, *, output: str | Path,
             tokenizer: Any = None, overwrite: bool = False, resume: bool = False, progress: bool = False,
             **settings: Any) -> Run:
    """Quantize a model block by block into the run folder ``output`` and return the :class:`Run`.

    ``model_or_path``: a model folder, hub id or built-in name (streamed block by block, as ``tbq quantize`` does),
    or an in-memory transformers ``PreTrainedModel`` of a supported family, on CPU; that one is changed in place (its
    linears end holding their dequantized weights) and calibrated with ``tokenizer`` or, without one, the tokenizer
    of its ``name_or_path``. ``config``: a RunConfig or a config-file object (``{"quant": {...}, "calib": {...},
    "rules": [...], "ignore": [...]}``); ``settings`` override it with the CLI's names (``bits=4``, ``method="gptq"``,
    ``nsamples=128``, ``ignore=["re:.*down_proj$"]``, ``rotation_seed=0``, ...). Raises TbqError on bad input."""
    from .pipeline.sequential import quantize_model

    if isinstance(model_or_path, (str, Path)):
        path = quantize_model(_build(str(model_or_path), config, settings), Path(output), overwrite, resume, progress)
        return Run.open(path)
    return _quantize_in_memory(model_or_path, config, Path(output), tokenizer, overwrite, resume, progress, settings)


def _quantize_in_memory(model: Any, config, output: Path, tokenizer, overwrite: bool, resume: bool, progress: bool,
                        settings: dict[str, Any]) -> Run:
    """:func:`quantize` of a loaded model: run.json records its model_type and ``name_or_path`` (``in_memory``:
    true), and the run saves its config, tokenizer and generation config, so that it exports like any run."""
    from transformers import PreTrainedModel

    from .atomic import refuse_overlap
    from .errors import TbqError
    from .pipeline.sequential import quantize_loaded

    if not isinstance(model, PreTrainedModel):
        raise TbqError(f"cannot quantize a {type(model).__name__}; pass a model folder, hub id, built-in name or a "
                       "transformers PreTrainedModel")
    name = str(getattr(model, "name_or_path", "") or "")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise TbqError("the in-memory model has parameters off the CPU; move it with model.to('cpu') (tbq moves one "
                       "block at a time to the device setting)")
    if tokenizer is None:
        tokenizer = _tokenizer_of(name, settings.get("trust_remote_code", False))
    if name and Path(name).is_dir():
        refuse_overlap(output, Path(name), "model")
    cfg = _build(name or "in-memory", config, settings)
    model.eval()
    model.config.use_cache = False
    path = quantize_loaded(model, tokenizer, cfg, output, {"source": name or "in-memory", "in_memory": True,
                                                           "name_or_path": name}, [], overwrite, resume, progress)
    return Run.open(path)


def _tokenizer_of(name: str, trust_remote_code: bool):
    """The tokenizer saved with an in-memory model's ``name_or_path``; a TbqError when there is none to load."""
    from transformers import AutoTokenizer

    from .errors import TbqError
    from .models import MODEL_FIX, resolve_model
    from .readers import reading

    if not name:
        raise TbqError("an in-memory model without name_or_path needs a tokenizer for calibration; pass tokenizer=...")
    with reading(name, "the tokenizer of model", MODEL_FIX + "; or pass tokenizer=..."):
        return AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)


def export(run: Run | str | Path, format: str, out: str | Path, overwrite: bool = False) -> Path:
    """Write the run as a checkpoint at ``out`` and return its path: ``vllm`` (compressed-tensors pack-quantized,
    with a model card) or ``hf`` (dense dequantized weights). Raises TbqError for an unknown format, a run the
    format cannot express, or an output that exists (without ``overwrite``) or overlaps the run."""
    from .export.compressed_tensors import export_run

    return export_run(Path(run.path if isinstance(run, Run) else run), format, Path(out), overwrite)


def load_fake_quant_model(run: Run | str | Path, dtype: "torch.dtype | None" = None):
    """The run's transformers model (CPU, eval mode, ``dtype`` or the run's own) with each quantized linear's
    weight replaced by its dequantized one [out_features, in_features], and the run's online rotation and
    activation-quantization hooks installed. Raises TbqError when the run is incomplete or lacks tensors."""
    from .pipeline.rundir import load_fake_quant_model as load

    return load(Path(run.path if isinstance(run, Run) else run), dtype)


__all__ = ["Run", "export", "load_fake_quant_model", "quantize"]
