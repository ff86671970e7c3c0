"""Small helpers shared by the benchmarks: summary statistics and a markdown table."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "n": int(a.size),
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "min_ms": float(a.min()),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_rows(header: Sequence[str], table: Sequence[Sequence[object]], rows: list[dict], json_out: str | None) -> int:
    """Print the table, write the raw rows as JSON when asked; exit status 1 if a row failed."""
    print(markdown_table(header, table))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if any("error" in r for r in rows) else 0
