"""Per-tensor records written at export time (dtype, shape, SHA-256 of the bytes) and checked by ``tbq verify``:
any flipped byte of any tensor, quantized or not, is found and named."""

from __future__ import annotations

import hashlib

import torch


def tensor_record(t: torch.Tensor) -> dict:
    """{"dtype": "torch.float16", "shape": [..], "sha256": hex digest of the tensor's bytes (C order)}."""
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return {"dtype": str(t.dtype), "shape": list(t.shape), "sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest()}


def record_mismatch(name: str, t: torch.Tensor, expected: dict) -> str | None:
    """What differs between tensor ``name`` and its export-time record (None: nothing)."""
    got = tensor_record(t)
    for key in ("dtype", "shape", "sha256"):
        if got[key] != expected[key]:
            what = "content (checksum)" if key == "sha256" else key
            return f"{name}: {what} differs from the export's record ({got[key]} vs {expected[key]})"
    return None
