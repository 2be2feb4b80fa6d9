"""Pieces of the GPU benchmark scripts that can be checked without a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serving_rows_never_share_a_checkpoint_they_differ_in():
    """Two rows share a random checkpoint folder only when they write the same checkpoint: a folder named by the
    row's position let ``--only "W4A4 channel (tbq)"`` reuse the fp16 row's folder and time fp16 as W4A4."""
    bench = load("int_act_serving")
    for shape in ("llama3-8b", "llama2-7b"):
        folder_of = {}
        for rows in bench.SETS.values():
            for label, (kwargs, _) in rows.items():
                folder = bench.checkpoint_name(shape, label)
                assert folder_of.setdefault(folder, kwargs) == kwargs, (folder, label)
        assert len(folder_of) >= len(bench.INT_ACT)
