"""tbq's CUDA sources (``csrc/*.cu``) compiled with nvcc the first time they are used on a GPU model and cached under
``$TBQ_CACHE/kernels`` (the file name carries the source's hash and the GPU's compute capability), loaded with ctypes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from turboboa_export.models import cache_dir

CSRC = Path(__file__).with_name("csrc")


def nvcc() -> str:
    """The nvcc to build with: $CUDA_HOME/bin/nvcc, else the one on PATH; a one-line error when there is none."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    local = Path(home) / "bin" / "nvcc" if home else None
    found = str(local) if local is not None and local.is_file() else shutil.which("nvcc")
    if not found:
        raise RuntimeError("tbq's CUDA kernels are built with nvcc, which was not found; install the CUDA toolkit or "
                           "set CUDA_HOME")
    return found


def built(source_path: Path, capability: tuple[int, int]) -> Path:
    """The shared library of a CUDA source (``csrc/*.cu``) for a compute capability, built once, atomically, into the
    cache as ``<stem>-<sha256[:16]>-sm<arch>.so`` (no GPU needed: ``docs/gpu-calib/build-carry.sh`` builds ahead);
    RuntimeError naming nvcc's last message when the build fails."""
    name = source_path.stem
    source = source_path.read_bytes()
    arch = f"{capability[0]}{capability[1]}"
    target = cache_dir() / "kernels" / f"{name}-{hashlib.sha256(source).hexdigest()[:16]}-sm{arch}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            cmd = [nvcc(), "-O3", "-std=c++17", "--shared", "-Xcompiler", "-fPIC",
                   f"-gencode=arch=compute_{arch},code=sm_{arch}", "-o", tmp, str(source_path)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"nvcc failed to build {source_path.name}: "
                                   f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}")
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return target


@functools.cache
def compiled(source_path: Path, capability: tuple[int, int]) -> ctypes.CDLL:
    """A CUDA source's library (``built``) loaded with ctypes."""
    return ctypes.CDLL(str(built(source_path, capability)))
