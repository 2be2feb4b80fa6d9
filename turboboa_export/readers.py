"""Reading the files users hand tbq, behind one error boundary.

Whatever goes wrong while a file is parsed (missing, not UTF-8, not JSON, a broken JSONL line, a truncated
safetensors shard, a tokenizer transformers cannot build) becomes one ``TbqError`` line that names the file, the
line where there is one, and what to do. Nothing here unpickles: JSON, text and safetensors only.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .errors import TbqError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextmanager
def reading(path: Path | str, what: str, fix: str) -> Iterator[None]:
    """Turn any failure inside the block into ``TbqError("<what> <path> ...; <fix>")``; a TbqError passes through.

    ``what`` names the kind of file ("config file", "dataset file"), ``fix`` says what to do about it.
    """
    try:
        yield
    except TbqError:
        raise
    except FileNotFoundError:
        raise TbqError(f"{what} {path} does not exist; {fix}") from None
    except IsADirectoryError:
        raise TbqError(f"{what} {path} is a directory, not a file; {fix}") from None
    except UnicodeDecodeError as e:
        raise TbqError(f"{what} {path} is not UTF-8 text (undecodable byte at offset {e.start}); {fix}") from None
    except json.JSONDecodeError as e:
        raise TbqError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None
    except Exception as e:  # parsers of other libraries fail in many types (OSError, SafetensorError, ...)
        raise TbqError(f"could not read {what} {path} ({type(e).__name__}: {_first_line(e)}); {fix}") from None


def read_text(path: Path, what: str, fix: str) -> str:
    """The UTF-8 text of ``path``."""
    with reading(path, what, fix):
        return Path(path).read_text(encoding="utf-8")


def read_json_object(path: Path, what: str, fix: str) -> dict:
    """The JSON object (a dict) stored in ``path``; any other JSON value is refused."""
    with reading(path, what, fix):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TbqError(f"{what} {path} holds a JSON {type(data).__name__}, not an object {{...}}; {fix}")
    return data


def read_jsonl_texts(path: Path, field: str = "text") -> list[str]:
    """The ``field`` string of every non-empty line of a JSONL file; a broken line is named by its number."""
    fix = f'each line must be a JSON object with a "{field}" string'
    texts = []
    for n, line in enumerate(read_text(path, "dataset file", fix).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TbqError(f"dataset file {path} line {n} is not valid JSON ({e.msg} at column {e.colno}); {fix}") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise TbqError(f"dataset file {path} line {n} has no \"{field}\" string; {fix}")
        texts.append(row[field])
    return texts


def read_safetensors(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file."""
    from safetensors.torch import load_file

    with reading(path, what, fix):
        return load_file(path)
