"""What a conversion does to a model's `config.json`: plain data the planner derives from the
plan (compile) and the model-directory writer applies (formats), so neither imports the other."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class ConfigPatch:
    """How `config.json` changes: `set` keys to values, `remove` keys, and `dtype` the
    model's dtype (written to whichever dtype keys the config has). Empty: no change."""

    set: Mapping[str, Any] = field(default_factory=dict)
    remove: frozenset[str] = frozenset()
    dtype: str | None = None

    def __bool__(self) -> bool:
        return bool(self.set or self.remove or self.dtype)

    def describe(self) -> list[str]:
        """One phrase per change, for `explain`."""
        out = [f"{k} removed" for k in sorted(self.remove)]
        out += [f"{k} = {json.dumps(v, sort_keys=True)}" for k, v in sorted(self.set.items())]
        if self.dtype:
            out.append(f"dtype {self.dtype}")
        return out
