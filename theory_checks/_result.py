"""What a check returns: one row per sub-claim, gathered into a result per claim."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Check:
    """One sub-claim: the theory's value, the measurement and the PASS rule.

    ``values`` holds the raw numbers behind the row (used to compare backends); names
    starting with ``err_`` are rounding-error measurements, which differ between backends
    by design.
    """

    name: str
    predicted: str
    measured: str
    passed: bool
    rule: str
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    """The result of one claim's check.

    ``curvature`` says which curvature matrix ("which Fisher") the check uses; ``details``
    is Markdown for the report; ``figures`` are the PNG files written (empty without an
    output folder). ``skipped`` is the reason the claim could not be checked here (a missing
    optional package), empty when it was: a skipped claim has not passed.
    """

    name: str
    claim: str
    curvature: str
    checks: list[Check]
    figures: list[Path] = field(default_factory=list)
    details: str = ""
    seconds: float = 0.0
    skipped: str = ""

    @property
    def passed(self) -> bool:
        """True when the claim was checked and every sub-claim passed."""
        return not self.skipped and all(c.passed for c in self.checks)

    @property
    def status(self) -> str:
        """``"PASS"``, ``"FAIL"`` or ``"SKIP"`` (not checked: see ``skipped``)."""
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"

    def check_status(self, check: Check) -> str:
        """The status of one of its rows: ``"SKIP"`` for every row of a skipped claim."""
        return "SKIP" if self.skipped else "PASS" if check.passed else "FAIL"

    @property
    def predicted(self) -> str:
        return "; ".join(f"{c.name}: {c.predicted}" for c in self.checks)

    @property
    def measured(self) -> str:
        return "; ".join(f"{c.name}: {c.measured}" for c in self.checks)

    def values(self) -> dict[str, float]:
        """Every sub-claim's raw numbers, keyed ``"<check>.<value>"``."""
        return {f"{c.name}.{k}": v for c in self.checks for k, v in c.values.items()}
