"""The printed table and the Markdown report."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ._config import Config
from ._result import Result


def table(results: Sequence[Result]) -> str:
    """One row per sub-claim: claim number and name, check, result, predicted, measured."""
    head = ("claim", "check", "result", "predicted", "measured")
    rows = []
    for r in results:
        for c in r.checks:
            rows.append((r.name, c.name, r.check_status(c), c.predicted, c.measured))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head[:3])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:3], widths, strict=True))
             + "  predicted | measured"]
    for row in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row[:3], widths, strict=True))
                     + f"  {row[3]} | {row[4]}")
    return "\n".join(lines)


def write(out: Path, results: Sequence[Result], config: Config, header: Sequence[str],
          seconds: float) -> Path:
    """Write ``out/report.md`` (figures already lie in ``out``); return its path."""
    out.mkdir(parents=True, exist_ok=True)
    passed = sum(r.passed for r in results)
    skipped = [r.name for r in results if r.skipped]
    not_checked = f" ({len(skipped)} not checked: {', '.join(skipped)})" if skipped else ""
    lines = [
        "# SENG theory checks",
        "",
        f"{passed} of {len(results)} claims pass{not_checked}. Backend {config.backend} on "
        f"{config.device}, seed {config.seed}, {'quick' if config.quick else 'default'} "
        f"sizes, {seconds:.1f} s.",
        "",
        *header,
        "",
        "| claim | check | result | predicted | measured |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for c in r.checks:
            lines.append(f"| {r.name} | {_md(c.name)} | {r.check_status(c)} | "
                         f"{_md(c.predicted)} | {_md(c.measured)} |")
    for r in results:
        lines += [
            "",
            f"## {r.name}: {r.claim} ({r.status}, {r.seconds:.1f} s)",
            "",
            f"Curvature (which Fisher): {r.curvature}.",
            "",
            f"Theory and rules: `docs/theory/{r.name}.md`.",
            "",
            r.details.strip(),
            "",
            "| check | result | PASS rule |",
            "|---|---|---|",
        ]
        for c in r.checks:
            lines.append(f"| {_md(c.name)} | {r.check_status(c)} | {_md(c.rule)} |")
        for fig in r.figures:
            rel = os.path.relpath(fig, out)
            lines += ["", f"![{fig.stem}]({rel})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _md(text: str) -> str:
    return text.replace("|", "\\|")
