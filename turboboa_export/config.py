"""Typed, validated configuration; exactly what is written to ``run.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .errors import TbqError
from .readers import read_json_object

Method = Literal["rtn", "gptq", "boa", "turboboa"]
Search = Literal["minmax", "mse", "hessian"]
SUPPORTED_BITS = (2, 3, 4, 8)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantConfig(_Strict):
    """What to do to each linear layer."""

    method: Method = "turboboa"
    bits: int = 4
    group_size: int = -1
    sym: bool = False
    grid: Search = "hessian"
    damp: float = 0.01
    act_order: bool = False
    row_act_order: bool = False
    rows: int = 16
    alpha: float = 0.25
    refine_iters: int = 1
    adaptive_grid: bool = True

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if v not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {v}")
        return v

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v != -1 and v <= 0:
            raise ValueError(f"group size must be -1 (per channel) or a positive divisor of in_features, got {v}")
        return v

    @field_validator("damp", "alpha")
    @classmethod
    def _nonneg(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v

    @field_validator("rows")
    @classmethod
    def _rows(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"rows per block must be >= 1, got {v}")
        return v

    @field_validator("refine_iters")
    @classmethod
    def _iters(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"refine iterations must be >= 0, got {v}")
        return v


class CalibConfig(_Strict):
    """Calibration data: a dataset name or local file, random windows of ``seqlen`` tokens."""

    dataset: str = "exl2-wiki"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0

    @field_validator("nsamples", "seqlen")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v


class TransformConfig(_Strict):
    """Rotation and activation quantization (W4A4, algorithm.md section 6)."""

    rotate: Literal["none", "hadamard"] = "none"
    online_rotation: str = "full"  # down_proj's online Hadamard: "full" (H_n) or "block:B" (I kron S_B)
    act_bits: int | None = None
    act_clip: float = 0.9
    kv_bits: int | None = None
    seed: int = 0

    @field_validator("act_bits", "kv_bits")
    @classmethod
    def _act_bits(cls, v: int | None, info) -> int | None:
        if v is not None and v not in (4, 8):
            what = "activation" if info.field_name == "act_bits" else "KV-cache"
            raise ValueError(f"{what} bits must be 4 or 8, got {v}")
        return v

    @field_validator("online_rotation")
    @classmethod
    def _online(cls, v: str) -> str:
        from .rotation.hadamard import parse_online_rotation

        parse_online_rotation(v)
        return v

    @model_validator(mode="after")
    def _online_needs_rotation(self) -> "TransformConfig":
        if self.online_rotation != "full" and self.rotate != "hadamard":
            raise ValueError(f"online rotation {self.online_rotation} needs --rotate hadamard")
        return self

    @property
    def online_block(self) -> int | None:
        """B of ``block:B``, None for the full online Hadamard."""
        from .rotation.hadamard import parse_online_rotation

        return parse_online_rotation(self.online_rotation)

    @field_validator("act_clip")
    @classmethod
    def _clip(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"activation clip ratio must be in (0, 1], got {v}")
        return v


class RunConfig(_Strict):
    """One quantization run."""

    model: str
    quant: QuantConfig = QuantConfig()
    calib: CalibConfig = CalibConfig()
    transform: TransformConfig = TransformConfig()
    device: str = "auto"
    trust_remote_code: bool = False


CONFIG_FILE_FIX = 'write a JSON object like {"quant": {"bits": 4}, "calib": {"nsamples": 128}}'

PRESETS: dict[str, dict] = {
    "w4-g128": {"bits": 4, "group_size": 128},
    "w4-g64": {"bits": 4, "group_size": 64},
    "w4": {"bits": 4},
    "w3-g128": {"bits": 3, "group_size": 128},
    "w3-g64": {"bits": 3, "group_size": 64},
    "w3": {"bits": 3},
    "w2": {"bits": 2},
    "w8": {"bits": 8},
}


def _explain(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"invalid setting {where}: {msg}"


def build_config(
    model: str,
    preset: str | None = None,
    config_file: Path | None = None,
    quant: dict | None = None,
    calib: dict | None = None,
    transform: dict | None = None,
    **run: object,
) -> RunConfig:
    """Merge a preset, a JSON config file and explicit settings (later wins) into a validated RunConfig."""
    q: dict = {}
    c: dict = {}
    t: dict = {}
    r: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise TbqError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        q.update(PRESETS[preset])
    if config_file is not None:
        data = read_json_object(Path(config_file), "config file", CONFIG_FILE_FIX)
        for key, section in (("quant", q), ("calib", c), ("transform", t)):
            part = data.pop(key, {})
            if not isinstance(part, dict):
                raise TbqError(f"config file {config_file}: \"{key}\" is a JSON {type(part).__name__}, not an object; "
                               f"{CONFIG_FILE_FIX}")
            section.update(part)
        data.pop("model", None)
        r.update(data)
    q.update({k: v for k, v in (quant or {}).items() if v is not None})
    c.update({k: v for k, v in (calib or {}).items() if v is not None})
    t.update({k: v for k, v in (transform or {}).items() if v is not None})
    r.update({k: v for k, v in run.items() if v is not None})
    try:
        return RunConfig(model=model, quant=QuantConfig(**q), calib=CalibConfig(**c), transform=TransformConfig(**t),
                         **r)
    except ValidationError as e:
        raise TbqError(_explain(e)) from None
