"""What every section of ``experiments/RESULTS.md`` is rendered with: Markdown table and cell
formatting, the provenance line, and ``Sources`` (where a section reads what its own record
does not hold). Each experiment module renders its own section (``render_section``);
``experiments/report.py`` only assembles them. Imports nothing of latemm.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sources:
    """Where a section reads beyond its own record (``report.py`` builds it).

    Parameters
    ----------
    results
        The folder of results JSON (``experiments/results`` or ``$LATEMM_RESULTS``).
    writeups
        The folder of hand-written fragments (``experiments/writeups``).
    writeup
        ``name`` -> the fragment ``writeups/<name>.md``, its table marks rendered.
    """

    results: Path
    writeups: Path
    writeup: Callable[[str], str]

    def load(self, name: str, quick: bool) -> dict[str, Any] | None:
        """``<name>_quick.json`` first with ``quick``; otherwise the newer of ``<name>.json``
        and ``<name>_quick.json`` by recorded date (a quick run with larger options can be the
        latest)."""
        records = [
            dict(json.loads(path.read_text(encoding="utf-8")))
            for path in (self.results / f"{name}_quick.json", self.results / f"{name}.json")
            if path.is_file()
        ]
        if not records:
            return None
        return records[0] if quick else max(records, key=lambda r: str(r.get("date", "")))

    def optional_writeup(self, name: str) -> str:
        """``writeup(name)`` if that fragment exists, else an empty string."""
        return self.writeup(name) if (self.writeups / f"{name}.md").is_file() else ""


def provenance(record: dict[str, Any], note: str = "") -> str:
    """The italic line naming a record's command, commit, machine and date; ``note`` (a fragment's
    text) goes verbatim before the closing period."""
    machine = record.get("machine", {})
    where = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
    if machine.get("gpu"):
        where += f", {machine['gpu']}"
    return f"*`{record.get('command')}` at commit `{record.get('commit')}` on {where}, {record.get('date')}{note}.*"


def fmt(value: Any) -> str:
    """A table cell: 3 significant digits, thousands separated from 1,000 on."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def sig3(value: float) -> str:
    """3 significant digits, trailing zeros kept (35.0, 178, 8.09), for columns of timings."""
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}" if value else "0"
