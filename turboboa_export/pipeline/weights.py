"""Where a run's weights come from: streamed from the model's safetensors checkpoint into a skeleton built on the
meta device, one part (a decoder block, the embeddings, the head) when its turn comes and dropped after, or a
transformers model already in memory (the Python API), whose parts are all there.

Both give the pipeline the same calls, ``load(model, path)`` before a part is used, ``release(module)`` after and
``prefetch(model, path)`` to read a part ahead, so there is one quantization loop. A streamed part holds exactly what ``from_pretrained`` would have put
there (the skeleton's dtype: the config's, else the checkpoint's first floating tensor's; tied parameters read
from whichever name the checkpoint stores); ``tests/test_streaming.py`` compares the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import SafetensorsFiles, model_files
from ..errors import TbqError
from ..models import MODEL_FIX, load_config

META = torch.device("meta")


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """While active, every parameter a module registers is moved to the meta device (no memory; its
    initialization runs on meta, so costs nothing); buffers (rotary frequencies, embedding scales, computed
    at construction and not stored in checkpoints) stay real on the CPU."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device != META:
            param = nn.Parameter(param.to(META), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _set(module: nn.Module, name: str, value: torch.Tensor, like: nn.Parameter) -> None:
    module._parameters[name] = nn.Parameter(value, requires_grad=like.requires_grad)


class StreamedWeights:
    """Parameters of a meta-device skeleton read from its checkpoint part by part.

    ``model``: the skeleton (``open_model``); ``files``: its checkpoint. Raises TbqError when the checkpoint lacks
    a parameter of the model (under every name it is tied to)."""

    def __init__(self, model: nn.Module, files: SafetensorsFiles):
        self.files = files
        tied: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            tied.setdefault(id(p), []).append(name)
        self.stored: dict[str, str] = {}  # parameter name -> the checkpoint tensor it is read from
        for names in tied.values():
            found = [n for n in names if n in files]
            if not found:
                raise TbqError(f"the checkpoint has no tensor {names[0]}; {MODEL_FIX}")
            self.stored.update(dict.fromkeys(names, found[0]))
        self._reader = ThreadPoolExecutor(max_workers=1)
        self._ahead: dict[str, Future] = {}  # path -> its tensors being read

    def _sources(self, module: nn.Module, path: str) -> dict[str, str]:
        """Local name -> checkpoint tensor of the parameters of ``module`` (``model.<path>``) still on meta."""
        return {n: self.stored[f"{path}.{n}" if path else n] for n, p in module.named_parameters() if p.device == META}

    def prefetch(self, model: nn.Module, path: str) -> None:
        """Start reading the tensors of ``model.<path>`` in the background, for its :meth:`load` (the next block's,
        read while the current one computes)."""
        sources = dict.fromkeys(self._sources(model.get_submodule(path), path).values())
        self._ahead[path] = self._reader.submit(lambda: dict(self.files.read(sources)))

    def load(self, model: nn.Module, path: str) -> nn.Module:
        """Read the parameters of ``model.<path>`` that are still on the meta device (on the CPU, in the skeleton's
        dtypes) and return that module."""
        module = model.get_submodule(path)
        sources = self._sources(module, path)
        ahead = self._ahead.pop(path, None)
        if not sources:
            return module
        by_source = ahead.result() if ahead is not None else dict(self.files.read(dict.fromkeys(sources.values())))
        for local, source in sources.items():
            full = f"{path}.{local}" if path else local
            owner_path, _, pname = local.rpartition(".")
            owner = module.get_submodule(owner_path)
            like = owner._parameters[pname]
            value = by_source[source]
            if tuple(value.shape) != tuple(like.shape):
                raise TbqError(f"tensor {source} of the checkpoint has shape {tuple(value.shape)}, the model's "
                               f"{full} {tuple(like.shape)}; {MODEL_FIX}")
            _set(owner, pname, value.to(like.dtype), like)
        return module

    def release(self, module: nn.Module) -> None:
        """Drop the module's parameters (back to the meta device); its buffers return to the CPU."""
        for m in module.modules():
            for name, p in m._parameters.items():
                if p is not None:
                    _set(m, name, p.detach().to(META), p)
            for name, b in m._buffers.items():
                if b is not None:
                    m._buffers[name] = b.to("cpu")


class InMemoryWeights:
    """A model whose weights are all in memory (on the CPU): loading is a lookup, releasing moves a part back to
    the CPU, where it stays, changed in place."""

    def load(self, model: nn.Module, path: str) -> nn.Module:
        return model.get_submodule(path)

    def prefetch(self, model: nn.Module, path: str) -> None:
        pass

    def release(self, module: nn.Module) -> None:
        module.to("cpu")


def checkpoint_dtype(config, files: SafetensorsFiles) -> torch.dtype:
    """The dtype ``from_pretrained(dtype="auto")`` gives a model: its config's, else its checkpoint's first
    floating-point tensor's."""
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is not None:
        return dtype
    return next((files.dtype(n) for n in files.keys() if files.dtype(n).is_floating_point), torch.float32)


def open_model(folder: Path, trust_remote_code: bool = False) -> tuple[nn.Module, StreamedWeights]:
    """The model of a local folder as a skeleton (parameters on the meta device; eval mode, no KV cache) and
    the :class:`StreamedWeights` that fill it. Raises TbqError for a folder transformers cannot build a model
    from, or whose safetensors weights are missing or do not match the model."""
    from transformers import AutoModelForCausalLM

    from ..readers import reading

    config = load_config(str(folder), trust_remote_code)
    files = SafetensorsFiles(model_files(Path(folder), MODEL_FIX), MODEL_FIX)
    with reading(folder, "model", MODEL_FIX), parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=checkpoint_dtype(config, files),
                                                 trust_remote_code=trust_remote_code)
    model.eval()
    model.config.use_cache = False
    return model, StreamedWeights(model, files)


def outer_paths(model: nn.Module, layers: str) -> list[str]:
    """Paths of the modules outside the decoder blocks ``layers`` (embeddings, final norm, head, rotary
    embedding): the children of ``layers``' ancestors, less those ancestors and ``layers`` itself."""
    parts = layers.split(".")
    ancestors = {".".join(parts[:i]) for i in range(len(parts) + 1)}
    out = []
    for prefix in sorted(ancestors, key=len):
        if prefix == layers:
            continue
        for name, _ in model.get_submodule(prefix).named_children():
            path = f"{prefix}.{name}" if prefix else name
            if path not in ancestors:
                out.append(path)
    return out
