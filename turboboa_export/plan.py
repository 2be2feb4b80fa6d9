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


def layer_config(quant: QuantConfig, name: str) -> QuantConfig | None:
    """The settings of linear ``name``: None when an ``ignore`` pattern matches (kept dense), else the run's
    settings with the first matching rule's applied."""
    if any(matches(p, name) for p in quant.ignore):
        return None
    rule = next((r for r in quant.rules if matches(r.pattern, name)), None)
    if rule is None:
        return quant
    update = rule.overrides()
    if update.get("method", quant.method) != quant.method:
        update["adaptive_grid"] = None  # another method: its own grid choice (boa fixed, turboboa adaptive)
    return quant.model_copy(update=update)  # the run's grid search and other settings stay


def scheme(cfg: QuantConfig | None) -> Scheme | None:
    """The stored format of a layer's settings (None: dense)."""
    return None if cfg is None else Scheme(cfg.bits, cfg.sym, cfg.group_size)


def block_plan(spec: ArchSpec, quant: QuantConfig, index: int) -> dict[str, tuple[str, QuantConfig | None]]:
    """Role -> (full module name, settings or None) of block ``index``'s linears, in execution order."""
    return {role: (name := f"{spec.layers}.{index}.{path}", layer_config(quant, name))
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
