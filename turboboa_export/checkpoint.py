"""Reading safetensors checkpoints tensor by tensor, never the whole file: a model folder's shards (one
``model.safetensors`` or those a ``model.safetensors.index.json`` names), or every ``*.safetensors`` file of a
folder (exports, which ``tbq verify`` checks for stray tensors too). Only headers are read up front; a tensor's
bytes are read when asked for, each file opened (memory-mapped) only while its tensors are copied out, so the
host holds what the caller keeps and nothing more. Nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .errors import TbqError
from .readers import read_json_object, reading

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def _header(path: Path, fix: str) -> dict[str, str]:
    """name -> stored dtype name ("BF16", ...) of every tensor of a safetensors file, from its header alone."""
    from safetensors import safe_open

    with reading(path, "safetensors file", fix), safe_open(path, framework="pt") as f:
        return {name: f.get_slice(name).get_dtype() for name in f.keys()}


class SafetensorsFiles:
    """Tensor name -> the file holding it, over several safetensors files; tensors are read on demand.

    ``files``: the files; ``fix``: what an error message tells the user to do. A tensor present in two files, or
    an unreadable header, is a one-line TbqError naming the file."""

    def __init__(self, files: Iterable[Path], fix: str):
        self.fix = fix
        self.where: dict[str, Path] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for path in files:
            for name, dtype in _header(Path(path), fix).items():
                if name in self.where:
                    raise TbqError(f"tensor {name} is in both {self.where[name]} and {path}; {fix}")
                if dtype not in DTYPES:
                    raise TbqError(f"tensor {name} of {path} has dtype {dtype}, which tbq does not read; {fix}")
                self.where[name] = Path(path)
                self.dtypes[name] = DTYPES[dtype]

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def keys(self) -> list[str]:
        return list(self.where)

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of tensor ``name``."""
        return self.dtypes[name]

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for each of ``names`` (in the order given, grouped by file), each a CPU tensor of its
        stored dtype that owns its memory; a file stays open (mapped) only while its tensors are being read. A
        name no file holds is a KeyError."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.where[name], []).append(name)
        for path, keys in by_file.items():
            with reading(path, "safetensors file", self.fix), safe_open(path, framework="pt") as f:
                for key in keys:  # a copy: safetensors' own tensor would keep the whole file mapped
                    yield key, f.get_tensor(key).clone()

    def get(self, name: str) -> torch.Tensor:
        """One tensor."""
        return next(self.read([name]))[1]


def model_files(folder: Path, fix: str) -> list[Path]:
    """The weight files of a model folder: the shards its ``model.safetensors.index.json`` names, else its
    ``model.safetensors``. A folder with neither (e.g. only pickled ``*.bin`` weights, which tbq does not
    unpickle) or an index naming a missing shard is a one-line TbqError."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        index = read_json_object(folder / INDEX, "checkpoint index", fix)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise TbqError(f"checkpoint index {folder / INDEX} has no \"weight_map\"; {fix}")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise TbqError(f"checkpoint index {folder / INDEX} names {missing[0]}, which is not in the folder; {fix}")
        return files
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    raise TbqError(f"model folder {folder} has no {SINGLE} or {INDEX} (tbq reads safetensors weights only, never "
                   f"pickled *.bin files); {fix}")
