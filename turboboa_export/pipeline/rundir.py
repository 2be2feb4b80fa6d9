"""The run directory: written under ``RUN.partial`` block by block (each file atomically), renamed to ``RUN``
when complete, so an interrupted run resumes and a finished one is never half-written.

Layout: ``run.json`` (config, versions, model, timings), ``blocks/NNNN.safetensors`` (codes, scales, zeros,
g_idx of each quantized linear), ``rest.safetensors`` (every other tensor, untouched), ``config.json``, the model
folder's other files (tokenizer, generation config, ...) byte for byte, ``metrics.jsonl`` (one line per quantized module).
"""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..algorithms.quantized import QuantizedWeight
from ..atomic import atomic_save_tensors, atomic_write_bytes, check_output_dir, replace_dir
from ..arch import spec_for
from ..checkpoint import SafetensorsFiles
from ..config import RunConfig, TransformConfig
from ..errors import TbqError
from ..readers import read_json_object, read_safetensors, reading
from ..models import NOT_CARRIED
from ..rotation.online import install_configured

EVAL_FILE = "eval.json"  # `tbq eval ppl --json` of the run, read by the export's model card

FIELDS = ("codes", "scale", "zero", "g_idx")
RUN_FILES = ("run.json", "rest.safetensors", "metrics.jsonl", "config.json")  # written by tbq, not copied
RUN_FIX = "pass the -o folder of a finished `tbq quantize`, or quantize again"


def versions() -> dict[str, str]:
    """Versions of the packages that decide the bits."""
    import transformers

    from .. import __version__

    return {"tbq": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def recorded_config(config: RunConfig) -> dict:
    """What ``run.json`` records of a config: everything, except the quantization settings its methods do not read
    (``methods.used_settings``); ``RunConfig(**recorded)`` fills those with defaults."""
    from ..methods import used_settings

    return {**config.model_dump(mode="json"), "quant": used_settings(config.quant)}


def _pack(name: str, q: QuantizedWeight) -> dict[str, torch.Tensor]:
    return {
        f"{name}.codes": q.codes.to(torch.uint8),
        f"{name}.scale": q.scale.float(),
        f"{name}.zero": q.zero.float(),
        f"{name}.g_idx": q.g_idx.to(torch.int32),
    }


def _unpack(tensors: dict[str, torch.Tensor]) -> dict[str, QuantizedWeight]:
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    return {n: QuantizedWeight(*(tensors[f"{n}.{f}"] for f in FIELDS)) for n in names}


class RunWriter:
    """Writes one run; ``blocks_done`` says where an interrupted run resumes."""

    def __init__(self, final: Path, config: RunConfig, overwrite: bool = False, resume: bool = False):
        self.final = Path(final)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.config = config
        self.blocks_done = 0
        check_output_dir(self.final, overwrite)
        if self.partial.exists() and resume:
            self._resume()
        else:
            if self.partial.exists():
                shutil.rmtree(self.partial)
            (self.partial / "blocks").mkdir(parents=True)
            self._write_info({"config": recorded_config(config), "versions": versions(), "blocks_done": 0})

    def _resume(self) -> None:
        info = self.info()
        if info["config"] != recorded_config(self.config):
            raise TbqError(f"{self.partial} was started with other settings; rerun with the same flags or drop --resume")
        self.blocks_done = info["blocks_done"]

    def info(self) -> dict:
        return json.loads((self.partial / "run.json").read_text())

    def _write_info(self, info: dict) -> None:
        atomic_write_bytes(self.partial / "run.json", json.dumps(info, indent=2).encode())

    def update_info(self, **fields) -> None:
        info = self.info()
        info.update(fields)
        self._write_info(info)

    def save_block(self, index: int, weights: dict[str, QuantizedWeight], metrics: list[dict]) -> None:
        """Persist one finished block: its tensors, then its metrics, then the resume marker."""
        tensors = {}
        for name, q in weights.items():
            tensors.update(_pack(name, q))
        atomic_save_tensors(self.partial / "blocks" / f"{index:04d}.safetensors", tensors)
        with open(self.partial / "metrics.jsonl", "a") as f:
            for m in metrics:
                f.write(json.dumps(m) + "\n")
        self.blocks_done = index + 1
        self.update_info(blocks_done=self.blocks_done)

    def load_block(self, index: int) -> dict[str, QuantizedWeight]:
        return _unpack(load_file(self.partial / "blocks" / f"{index:04d}.safetensors"))

    def abandon(self) -> None:
        """Remove the partial run (a run that cannot finish with these settings, so there is nothing to resume)."""
        shutil.rmtree(self.partial, ignore_errors=True)

    def finish(self, rest: dict[str, torch.Tensor], lm, tokenizer, sources: list[Path], **info) -> Path:
        """Write the untouched tensors and the config of ``lm`` (the quantized model), copy the model folder's other files (``sources``:
        tokenizer, generation config, chat template, ...) byte for byte (with none, as for a hub id outside the cache
        or an in-memory model, transformers saves the tokenizer and the generation config), then move the run into
        place."""
        atomic_save_tensors(self.partial / "rest.safetensors", rest)
        lm.config.save_pretrained(self.partial)
        if not sources:
            tokenizer.save_pretrained(self.partial)
            if getattr(lm, "generation_config", None) is not None:
                lm.generation_config.save_pretrained(self.partial)
        for f in sources:
            shutil.copy2(f, self.partial / f.name)
        self.update_info(status="complete", **info)
        return replace_dir(self.partial, self.final)


class RunFollower(RunWriter):
    """What a rank other than 0 of a distributed run sees of the run that rank 0 writes (created by rank 0's
    RunWriter before this one): where it resumes and the saved blocks; it writes nothing."""

    def __init__(self, final: Path, config: RunConfig, overwrite: bool = False, resume: bool = False):
        self.final = Path(final)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.config = config
        self.blocks_done = self.info()["blocks_done"] if resume else 0

    def save_block(self, index: int, weights: dict[str, QuantizedWeight], metrics: list[dict]) -> None:
        self.blocks_done = index + 1

    def abandon(self) -> None:
        pass

    def finish(self, rest: dict[str, torch.Tensor], lm, tokenizer, sources: list[Path], **info) -> Path:
        return self.final


def side_files_of_run(run: Path) -> list[Path]:
    """The run's copies of its model folder's non-weight files: everything at its top level but its own files, a
    model card (runs written before issue 19 may hold the source's) and the run's ``eval.json``."""
    return sorted(f for f in Path(run).iterdir() if f.is_file() and not f.name.startswith(".")
                  and f.name not in RUN_FILES + NOT_CARRIED + (EVAL_FILE,))


def run_info(path: Path) -> dict:
    """``run.json`` of a finished run; TbqError when ``path`` is not one, or not complete."""
    path = Path(path)
    if not (path / "run.json").is_file():
        raise TbqError(f"{path} is not a tbq run (no run.json); pass the -o folder of `tbq quantize`")
    info = read_json_object(path / "run.json", "run file", RUN_FIX)
    if info.get("status") != "complete":
        raise TbqError(f"run {path} is not complete; finish it with `tbq quantize ... --resume`")
    return info


def _block_files(path: Path) -> list[Path]:
    return sorted((Path(path) / "blocks").glob("*.safetensors"))


def iter_run_weights(path: Path) -> Iterator[tuple[str, QuantizedWeight]]:
    """(module name, quantized weight) of a finished run's linears, read one block file at a time (a 70B run's
    codes do not fit in memory at once)."""
    for f in _block_files(path):
        yield from _unpack(read_safetensors(f, "run block file", RUN_FIX)).items()


def run_rest(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the run's unquantized tensors (``rest.safetensors``), read one at a time."""
    files = SafetensorsFiles([Path(path) / "rest.safetensors"], RUN_FIX)
    yield from files.read(files.keys())


def run_linear_names(path: Path) -> list[str]:
    """The quantized linears of a run, from its block files' headers (no tensor is read)."""
    files = SafetensorsFiles(_block_files(path), RUN_FIX)
    return sorted({k.rsplit(".", 1)[0] for k in files.keys()})


def load_run(path: Path) -> tuple[dict, dict[str, QuantizedWeight]]:
    """``run.json`` and the quantized weights of a finished run, all in memory (exports stream them:
    :func:`iter_run_weights`)."""
    info = run_info(path)
    return info, dict(iter_run_weights(path))


def load_fake_quant_model(path: Path, dtype: torch.dtype | None = None):
    """The run's model with dequantized weights in place of the originals (for evaluation and export checks),
    with the run's online Hadamard and activation fake-quantization hooks installed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    info, weights = load_run(path)
    with reading(path / "config.json", "run file", RUN_FIX):
        config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype)
    state = read_safetensors(path / "rest.safetensors", "run file", RUN_FIX)
    for name, q in weights.items():
        state[f"{name}.weight"] = q.dequantize()
    tied = getattr(config, "tie_word_embeddings", False)
    missing = set(model.load_state_dict(state, strict=False).missing_keys)
    if tied:
        model.tie_weights()
        missing.discard("lm_head.weight")
    if missing:
        raise TbqError(f"run {path} lacks tensors {sorted(missing)[:3]}...; re-run `tbq quantize`")
    # the weights are stored rotated; put back what runs online (nothing for plain runs)
    install_configured(model, spec_for(config), TransformConfig(**info["config"].get("transform", {})))
    model.eval()
    return model
