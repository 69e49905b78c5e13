"""The one record every benchmark, real or synthetic, is loaded into."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """A problem statement with its gold final answer (a LaTeX string, never wrapped in ``\\boxed{}``)."""

    id: str
    problem: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
