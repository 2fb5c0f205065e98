"""What ``--rank RULE`` (and a sweep's ``--rank RULE,...``), ``--cost`` and the truncation's calibration
accept, parsed without torch: the CLI checks them before it imports torch, and the rank rules
(``rank_rules``) use what this parses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from compactify.errors import BadInputError

KINDS = ("energy", "nuclear", "threshold", "rank", "flops", "error")
GLOBAL_KINDS = ("flops", "error")
_USAGE = "use energy:F, nuclear:F, threshold:T, rank:N, flops:F or error:E, e.g. energy:0.99"
_EXAMPLES = {"energy": "0.99", "nuclear": "0.99", "threshold": "1e-3", "rank": "16", "flops": "0.5", "error": "1e-2"}
COSTS = ("flops", "latency")  # --cost: factor by FLOPs, or only where the factored layer measures faster
CALIBRATIONS = ("random", "digits")  # inputs the truncation error is measured on
UNTRUNCATED = "none"  # a sweep's budget of the conversion without --rank


@dataclass(frozen=True)
class RankRule:
    kind: str
    value: float

    @property
    def is_global(self) -> bool:
        return self.kind in GLOBAL_KINDS

    @property
    def text(self) -> str:
        return f"{self.kind}:{int(self.value)}" if self.kind == "rank" else f"{self.kind}:{self.value:g}"

    def __str__(self) -> str:
        return self.text


def parse_rank_rule(text: str) -> RankRule:
    """``"energy:0.99"`` -> ``RankRule("energy", 0.99)``; BadInputError (one line) otherwise."""
    if not isinstance(text, str) or ":" not in text:
        raise BadInputError(f"cannot parse --rank rule {text!r}: {_USAGE}")
    kind, _, raw = text.strip().partition(":")
    kind, raw = kind.strip().lower(), raw.strip()
    if kind not in KINDS:
        raise BadInputError(f"unknown --rank rule {kind!r} in {text!r}: {_USAGE}")
    example = f"{kind}:{_EXAMPLES[kind]}"
    if kind == "rank":
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise BadInputError(f"--rank {text!r}: the rank must be a whole number >= 1, e.g. {example}")
        return RankRule(kind, n)
    try:
        value = float(raw)
    except ValueError:
        raise BadInputError(f"--rank {text!r}: {raw!r} is not a number, e.g. {example}") from None
    if not math.isfinite(value):
        raise BadInputError(f"--rank {text!r}: the value must be finite, e.g. {example}")
    if kind == "error":
        if value <= 0:
            raise BadInputError(f"--rank {text!r}: the error bound must be > 0, e.g. {example}")
    elif not 0 < value <= 1:
        raise BadInputError(f"--rank {text!r}: the fraction must be in (0, 1], e.g. {example}")
    return RankRule(kind, value)


def parse_budgets(text: str | Sequence[str]) -> list[str]:
    """``"flops:0.3,flops:0.5,energy:0.99"`` -> the rules, each checked; ``none`` is always added first."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    if not parts or any(not p for p in parts):
        raise BadInputError(f"--rank must list rules separated by commas, like flops:0.3,flops:0.5,energy:0.99; "
                            f"got {text!r}")
    rules = []
    for p in parts:
        if p.lower() == UNTRUNCATED:
            continue
        rules.append(parse_rank_rule(p).text)
    if len(set(rules)) != len(rules):
        raise BadInputError(f"--rank lists a rule twice: {text!r}")
    return [UNTRUNCATED, *rules]
