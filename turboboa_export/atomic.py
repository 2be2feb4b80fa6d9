"""Writes that never leave a half-written file or folder behind: temp beside the target, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import TbqError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors file written to a temp file beside ``path``, then renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to replace a file, or a non-empty directory unless asked to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TbqError(f"output path {out} is a file; choose a directory for -o")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TbqError(f"output directory {out} exists and is not empty; pass --overwrite or choose another -o")


def refuse_overlap(out: Path, source: Path, what: str) -> None:
    """Refuse an output folder that is, contains, or lies inside ``source`` (the input model or run), whatever
    ``--overwrite`` says: replacing it would delete what is being read."""
    out, src = Path(out).resolve(), Path(source).resolve()
    if out == src:
        relation = "is"
    elif out in src.parents:
        relation = "contains"
    elif src in out.parents:
        relation = "lies inside"
    else:
        return
    raise TbqError(f"output folder {out} {relation} the input {what} {src}; choose a -o outside it")


def replace_dir(src: Path, dst: Path) -> Path:
    """Move the finished folder ``src`` to ``dst``, replacing what was there."""
    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        os.replace(dst, old)
        shutil.rmtree(old)
    os.replace(src, dst)
    return dst
