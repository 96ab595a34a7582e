"""Keep/drop rules for audited faces, read from a JSON or YAML file.

    {"sharpness": {"min": 20}, "niqe": {"max": 12}, "yaw": {"abs_max": 45}}

Each key is a measured column of the audit's faces/ table; each bound is one rule. A face is
kept when it passes every rule. A face without a value for a column (for example no detection
score for faces given by manifest landmarks) is not dropped by that column's rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from codeformer_core.settings import read_mapping

BOUNDS = {"min": ">=", "max": "<=", "abs_max": "abs<="}


@dataclass(frozen=True)
class Rule:
    column: str
    bound: str  # a key of BOUNDS
    limit: float

    @property
    def name(self) -> str:
        if self.bound == "abs_max":
            return f"|{self.column}|<={self.limit:g}"
        return f"{self.column}{BOUNDS[self.bound]}{self.limit:g}"

    def passes(self, value: float | None) -> bool:
        if value is None:
            return True
        if self.bound == "min":
            return value >= self.limit
        if self.bound == "max":
            return value <= self.limit
        return abs(value) <= self.limit


def rules_from_mapping(values: Mapping[str, object], columns: set[str]) -> tuple[Rule, ...]:
    rules = []
    for column, bounds in values.items():
        if column not in columns:
            raise ValueError(f"threshold on unknown column {column!r}; known: {', '.join(sorted(columns))}")
        if not isinstance(bounds, Mapping) or not bounds:
            raise ValueError(f"{column}: give bounds as a mapping such as {{\"min\": 10}} (one or more of {', '.join(BOUNDS)})")
        for bound, limit in bounds.items():
            if bound not in BOUNDS:
                raise ValueError(f"{column}: unknown bound {bound!r}; use {', '.join(BOUNDS)}")
            if isinstance(limit, bool) or not isinstance(limit, (int, float)):
                raise ValueError(f"{column}.{bound} must be a number, got {limit!r}")
            rules.append(Rule(column, bound, float(limit)))
    return tuple(rules)


def load_rules(path: str | Path, columns: set[str]) -> tuple[Rule, ...]:
    return rules_from_mapping(read_mapping(path), columns)


def failed(rules: tuple[Rule, ...], values: Mapping[str, float | None]) -> list[str]:
    """Names of the rules `values` fails; empty means keep."""
    return [r.name for r in rules if not r.passes(values.get(r.column))]
