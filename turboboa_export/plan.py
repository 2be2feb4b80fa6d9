"""What is quantized, and how: each linear's settings from the run's ``ignore`` patterns and per-layer ``rules``.

A pattern is a glob (``model.layers.*.mlp.down_proj``) or ``re:REGEX`` (``re.match``, as compressed-tensors
matches its targets), against full module names such as ``model.layers.0.mlp.down_proj``.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import NamedTuple

from .arch import FUSED_ROLES, ArchSpec
from .config import QuantConfig
from .errors import TbqError


class Scheme(NamedTuple):
    """What a checkpoint stores of a quantized linear (the method does not change the format)."""

    bits: int
    sym: bool
    group_size: int


def matches(pattern: str, name: str) -> bool:
    """Whether module ``name`` matches a glob or ``re:`` pattern."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return fnmatchcase(name, pattern)


# TurboBoA's F2 weight on q/k feeding a per-head q/k RMS norm (Gemma 3, Qwen3) unless a rule sets one (issue 20):
# there H_out keeps the norm's gain but not its per-token 1/rms. Per channel W3 on Gemma-3-270M the F2 term raised
# held-out error above GPTQ's (block 1: +0.0054 +- 0.0006 with alpha 0.25, -0.0005 +- 0.0005 with 0; H200 wiki ppl
# 37.61 -> 23.19 without it), at W3 g64 it helped (21.81 -> 29.28 without it): a trade-off, docs/results.md
NORMED_QK_ALPHA = 0.0


def layer_config(quant: QuantConfig, name: str, normed_qk: bool = False) -> QuantConfig | None:
    """The settings of linear ``name``: None when an ``ignore`` pattern matches (kept dense), else the run's
    settings with the first matching rule's applied. ``normed_qk``: the linear is a q or k projection followed by a
    q/k norm, whose alpha is NORMED_QK_ALPHA unless its rule sets one."""
    if any(matches(p, name) for p in quant.ignore):
        return None
    rule = next((r for r in quant.rules if matches(r.pattern, name)), None)
    update = {"alpha": NORMED_QK_ALPHA} if normed_qk else {}
    update.update(rule.overrides() if rule is not None else {})
    return quant.model_copy(update=update) if update else quant  # the run's grid and other settings stay


def scheme(cfg: QuantConfig | None) -> Scheme | None:
    """The stored format of a layer's settings (None: dense)."""
    return None if cfg is None else Scheme(cfg.bits, cfg.sym, cfg.group_size)


def block_plan(spec: ArchSpec, quant: QuantConfig, index: int) -> dict[str, tuple[str, QuantConfig | None]]:
    """Role -> (full module name, settings or None) of block ``index``'s linears, in execution order."""
    return {role: (name := f"{spec.layers}.{index}.{path}",
                   layer_config(quant, name, normed_qk=role in ("q", "k") and spec.q_norm is not None))
            for role, path in spec.linears().items()}


def check_plan(spec: ArchSpec, quant: QuantConfig, layers) -> None:
    """Refuse, in one line: patterns that match no linear (a typo), group sizes that do not divide a layer's
    in_features, and fused shards (q/k/v, gate/up, which vLLM serves as one layer) with different schemes."""
    plans = [block_plan(spec, quant, i) for i in range(len(layers))]
    names = [name for plan in plans for name, _ in plan.values()]
    for what, patterns in (("ignore", quant.ignore), ("rule", [r.pattern for r in quant.rules])):
        for p in patterns:
            if not any(matches(p, n) for n in names):
                raise TbqError(f"{what} pattern {p!r} matches no quantized linear; patterns match full module names "
                               f"like {names[-1]} (glob, or re:REGEX)")
    for i, plan in enumerate(plans):
        for role, (name, cfg) in plan.items():
            k = layers[i].get_submodule(spec.linears()[role]).in_features
            if cfg is not None and cfg.group_size != -1 and k % cfg.group_size:
                raise TbqError(f"group size {cfg.group_size} does not divide in_features {k} of {name}; "
                               f"choose a divisor of {k} or -1 (per channel)")
        for roles in FUSED_ROLES:
            first, *others = roles
            for role in others:
                if scheme(plan[role][1]) != scheme(plan[first][1]):
                    a, b = plan[first], plan[role]
                    raise TbqError(f"{a[0]} ({describe(a[1])}) and {b[0]} ({describe(b[1])}) get different schemes, "
                                   f"but vLLM serves {'/'.join(roles)} as one fused layer with one scheme; "
                                   "give them the same bits/group_size/sym (and ignore both or neither)")


def describe(cfg: QuantConfig | None) -> str:
    """``W4 g128 asym`` / ``dense``."""
    if cfg is None:
        return "dense"
    group = "per-channel" if cfg.group_size == -1 else f"g{cfg.group_size}"
    return f"W{cfg.bits} {group} {'sym' if cfg.sym else 'asym'}"
