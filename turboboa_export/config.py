"""Typed, validated configuration; exactly what is written to ``run.json``."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .errors import TbqError
from .readers import read_json_object

Method = Literal["rtn", "gptq", "boa", "turboboa"]
Search = Literal["minmax", "mse", "hessian"]
SUPPORTED_BITS = (2, 3, 4, 8)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_bits(v: int) -> int:
    if v not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {v}")
    return v


def _check_group(v: int) -> int:
    if v != -1 and v <= 0:
        raise ValueError(f"group size must be -1 (per channel) or a positive divisor of in_features, got {v}")
    return v


def _check_pattern(v: str) -> str:
    """A module-name pattern: a glob (``model.layers.*.mlp.down_proj``) or ``re:REGEX`` (``re.match``, as
    compressed-tensors matches its targets)."""
    if not v or v == "re:":
        raise ValueError("a module pattern may not be empty; write a glob like model.layers.*.mlp.down_proj "
                         "or re:REGEX")
    if v.startswith("re:"):
        try:
            re.compile(v[3:])
        except re.error as e:
            raise ValueError(f"pattern {v!r} is not a valid regular expression ({e}); fix it or use a glob") from None
    return v


def _check_nonneg(v: float) -> float:
    if not 0 <= v < math.inf:  # NaN fails too
        raise ValueError(f"must be a finite number >= 0, got {v}")
    return v


Bits = Annotated[int, AfterValidator(_check_bits)]
NonNegative = Annotated[float, AfterValidator(_check_nonneg)]
GroupSize = Annotated[int, AfterValidator(_check_group)]
Pattern = Annotated[str, AfterValidator(_check_pattern)]


class Rule(_Strict):
    """Per-layer settings: linears whose full module name matches ``pattern`` take these instead of the run's
    (first matching rule wins; unset fields keep the run's)."""

    pattern: Pattern
    bits: Bits | None = None
    group_size: GroupSize | None = None
    sym: bool | None = None
    method: Method | None = None
    alpha: NonNegative | None = None

    def overrides(self) -> dict:
        """The settings this rule sets."""
        return {k: v for k, v in self.model_dump(exclude={"pattern"}).items() if v is not None}


class QuantConfig(_Strict):
    """What to do to each linear layer. ``grid`` defaults to minmax for rtn and hessian for the other methods;
    ``ignore`` lists module patterns kept dense; ``rules`` per-layer settings (see :class:`Rule`). A Hessian of
    width d summed over T tokens is damped by ``damp + sample_damp * d / T`` of its mean diagonal
    (``algorithms.gptq.token_damping``; ``sample_damp`` 0: the fixed ``damp`` of before issue 20)."""

    method: Method = "turboboa"
    bits: Bits = 4
    group_size: GroupSize = -1
    sym: bool = False
    grid: Search = "hessian"
    damp: NonNegative = 0.01
    sample_damp: NonNegative = 0.25
    act_order: bool = False
    row_act_order: bool = False
    rows: int = 16
    alpha: NonNegative = 0.25
    refine_iters: int = 1
    adaptive_grid: bool | None = None  # None: the method's own (turboboa on, boa off: BoA's grid is fixed up front)
    centred_keys: bool = False  # BoA/TurboBoA H_out,q from the attention-centred key covariance (not the paper's)
    ignore: tuple[Pattern, ...] = ()
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _default_grid(cls, data: object) -> object:
        """RTN rounds onto the min-max grid unless asked otherwise; the other methods search the Hessian grid."""
        if isinstance(data, dict) and data.get("grid") is None:
            data = {**data, "grid": "minmax" if data.get("method", "turboboa") == "rtn" else "hessian"}
        return data

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


HOLDOUT_DEFAULT = 2  # held-out windows when there are at least HOLDOUT_FROM (else none)
HOLDOUT_FROM = 8


class CalibConfig(_Strict):
    """Calibration data: a dataset name or local file, ``nsamples`` random windows of ``seqlen`` tokens drawn with
    ``seed``. The last ``holdout`` of them are held out (default HOLDOUT_DEFAULT when nsamples >= HOLDOUT_FROM, else
    0): they enter no statistic and only measure each block's output error on text the statistics did not see. The
    draw of nsamples windows starts with the draw of fewer, so the statistics come from exactly the windows of a
    run with ``nsamples - holdout`` windows and no hold-out, and the bits are that run's."""

    dataset: str = "exl2-wiki"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    holdout: int = 0  # filled from nsamples when not given

    @model_validator(mode="before")
    @classmethod
    def _default_holdout(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("holdout") is None:
            n = data.get("nsamples", cls.model_fields["nsamples"].default)
            data = {**data, "holdout": HOLDOUT_DEFAULT if isinstance(n, int) and n >= HOLDOUT_FROM else 0}
        return data

    @field_validator("nsamples", "seqlen")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, v: int, info) -> int:
        n = info.data.get("nsamples")
        if v < 0:
            raise ValueError(f"held-out windows must be >= 0, got {v}")
        if n is not None and v >= n:
            raise ValueError(f"{v} held-out windows leave none of the {n} to calibrate on; lower --holdout "
                             "below --nsamples")
        return v

    @property
    def windows(self) -> int:
        """The windows that calibrate: nsamples - holdout."""
        return self.nsamples - self.holdout


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


CONFIG_FILE_FIX = ('write a JSON object like {"quant": {"bits": 4}, "calib": {"nsamples": 128}, '
                   '"rules": [{"pattern": "re:.*down_proj$", "bits": 8}], "ignore": ["model.layers.0.*"]}')

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
    config_data: dict | None = None,
    **run: object,
) -> RunConfig:
    """Merge a preset, a JSON config file (or the same object as ``config_data``) and explicit settings (later
    wins; ``ignore`` patterns add up) into a validated RunConfig; with integer activations (``act_bits``) weights
    default to symmetric, what W4A4/W4A8 serving takes. Raises TbqError naming a bad setting."""
    q: dict = {}
    c: dict = {}
    t: dict = {}
    r: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise TbqError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        q.update(PRESETS[preset])
    if config_file is not None or config_data is not None:
        data = (read_json_object(Path(config_file), "config file", CONFIG_FILE_FIX) if config_file is not None
                else dict(config_data))
        for key, section in (("quant", q), ("calib", c), ("transform", t)):
            part = data.pop(key, {})
            if not isinstance(part, dict):
                raise TbqError(f"config {config_file or 'object'}: \"{key}\" is a JSON {type(part).__name__}, "
                               f"not an object; {CONFIG_FILE_FIX}")
            section.update(part)
        for key in ("rules", "ignore"):  # what is quantized may also sit at the top level
            if key in data:
                q[key] = data.pop(key)
        data.pop("model", None)
        r.update(data)
    quant = dict(quant or {})
    if quant.get("ignore"):  # --ignore adds to the config file's list
        quant["ignore"] = (*q.get("ignore", ()), *quant["ignore"])
    q.update({k: v for k, v in quant.items() if v is not None})
    c.update({k: v for k, v in (calib or {}).items() if v is not None})
    t.update({k: v for k, v in (transform or {}).items() if v is not None})
    r.update({k: v for k, v in run.items() if v is not None})
    if t.get("act_bits") and "sym" not in q:  # integer-activation layers are served with symmetric weights only
        q["sym"] = True
    try:
        return RunConfig(model=model, quant=QuantConfig(**q), calib=CalibConfig(**c), transform=TransformConfig(**t),
                         **r)
    except ValidationError as e:
        raise TbqError(_explain(e)) from None
