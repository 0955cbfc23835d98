"""The claims registry: THESIS.md's published numbers as data (experiments/claims.yaml).

A claim is one published number and the setting that produced it. The report
matches accuracy claims to our table rows by (model_label, arm, temperature),
difference claims to our paired comparisons, and benchmark claims to the gold
letters in full-scale predictions. Whether a matched number is *comparable*
(same scorer and prompt, full scale, the same item count) is decided here too,
so every place that shows a delta applies the same rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from fgrft.errors import RecordError

KINDS = ("accuracy", "difference", "benchmark")
# The thesis columns, in its order; "avg" is item-weighted over the three.
BENCHMARK_COLUMNS = ("MedQA", "PubMedQA", "MedMCQA")
AVG = "avg"
REQUIRED = ("id", "kind", "table", "row", "column", "value", "tolerance", "unit")
# Fields a claim of each kind must carry beyond REQUIRED.
REQUIRED_BY_KIND = {
    "accuracy": ("scorer", "prompt", "temperature", "preset", "model_label", "arm"),
    "difference": ("scorer", "prompt", "temperature", "preset", "model_label", "arm", "versus"),
    "benchmark": (),
}
CLAIMS_FILE = Path("experiments") / "claims.yaml"


class ClaimsError(RecordError):
    """A malformed claims file; the message names the claim."""


def column_of(source: str) -> str:
    """The thesis column a source belongs to (real and bundled-sample names alike).

    MedMCQA is tested before MedQA only for clarity: "MedMCQA_..." does not
    start with "MedQA" anyway. Unknown sources keep their own name as column.
    """
    for column in ("MedMCQA", "PubMedQA", "MedQA"):
        if source.startswith(column):
            return column
    return source


@dataclass(frozen=True)
class RowMatch:
    """What identifies one of our table rows: model option name, data arm, temperature."""

    model_label: str
    arm: str
    temperature: float | None

    def matches(self, model_label: str, arm: str, temperature: float | None) -> bool:
        return (self.model_label == model_label and self.arm == arm
                and _same_temperature(self.temperature, temperature))


def _same_temperature(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, abs_tol=1e-9)


@dataclass(frozen=True)
class Claim:
    id: str
    kind: str
    table: str
    row: str
    column: str
    value: float
    tolerance: float
    unit: str
    scorer: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    preset: str | None = None
    model_label: str | None = None
    arm: str | None = None
    tuple: tuple[float, int, int, int] | None = None
    items: int | None = None  # items the number is over (the tuple's total when there is one)
    versus: RowMatch | None = None
    note: str = ""

    @property
    def n_items(self) -> int | None:
        return self.items if self.items is not None else (self.tuple[2] if self.tuple else None)

    @property
    def match(self) -> RowMatch | None:
        if self.model_label is None or self.arm is None:
            return None
        return RowMatch(self.model_label, self.arm, self.temperature)

    def within_tolerance(self, ours: float) -> bool:
        # A small epsilon: 68.657 - 68.7 must not fail 0.1 on floating-point noise.
        return abs(ours - self.value) <= self.tolerance + 1e-9


def _claim(raw: Mapping[str, Any], index: int) -> Claim:
    if not isinstance(raw, Mapping):
        raise ClaimsError(f"claim {index}: expected a mapping, got {type(raw).__name__}")
    name = raw.get("id", f"#{index}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ClaimsError(f"claim {name}: kind {kind!r} is not one of {', '.join(KINDS)}")
    missing = [k for k in (*REQUIRED, *REQUIRED_BY_KIND[kind]) if raw.get(k) is None]
    if missing:
        raise ClaimsError(f"claim {name}: missing {', '.join(missing)}")
    unknown = set(raw) - {f for f in Claim.__dataclass_fields__}
    if unknown:
        raise ClaimsError(f"claim {name}: unknown field(s) {', '.join(sorted(unknown))}")
    tup = raw.get("tuple")
    if tup is not None:
        if len(tup) != 4:
            raise ClaimsError(f"claim {name}: tuple must be [accuracy, head_correct, total, tail_correct]")
        tup = (float(tup[0]), int(tup[1]), int(tup[2]), int(tup[3]))
    versus = raw.get("versus")
    if versus is not None:
        versus = RowMatch(str(versus["model_label"]), str(versus["arm"]), _float_or_none(versus.get("temperature")))
    return Claim(
        id=str(name), kind=kind, table=str(raw["table"]), row=str(raw["row"]), column=str(raw["column"]),
        value=float(raw["value"]), tolerance=float(raw["tolerance"]), unit=str(raw["unit"]),
        scorer=raw.get("scorer"), prompt=raw.get("prompt"), temperature=_float_or_none(raw.get("temperature")),
        preset=raw.get("preset"), model_label=raw.get("model_label"), arm=raw.get("arm"),
        tuple=tup, items=None if raw.get("items") is None else int(raw["items"]), versus=versus,
        note=str(raw.get("note") or ""),
    )


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


def parse_claims(doc: Mapping[str, Any]) -> list[Claim]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("claims"), list):
        raise ClaimsError("a claims file is a mapping with a list under 'claims'")
    claims = [_claim(raw, i) for i, raw in enumerate(doc["claims"])]
    seen: set[str] = set()
    for c in claims:
        if c.id in seen:
            raise ClaimsError(f"claim id {c.id} appears twice")
        seen.add(c.id)
    return claims


def load_claims(path: str | Path) -> list[Claim]:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ClaimsError(f"{path}: not valid YAML: {e}") from None
    try:
        return parse_claims(doc)
    except ClaimsError as e:
        raise ClaimsError(f"{path}: {e}") from None


def default_claims_path(root: str | Path) -> Path | None:
    """The registry the package carries (checkout or wheel), else the working directory's."""
    from fgrft.config.locations import EXPERIMENTS_DIR

    for candidate in (EXPERIMENTS_DIR / CLAIMS_FILE.name, Path(root) / CLAIMS_FILE):
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- comparability
@dataclass(frozen=True)
class Setting:
    """How one of our numbers was produced, as far as comparability with a claim goes."""

    scale: str
    scorer: str
    prompt: str | None
    items: int | None = None  # items behind this number, dropped ones included (None: unknown)


def comparability(claim: Claim, setting: Setting) -> tuple[list[str], list[str]]:
    """(blocking, caveats): why a delta between this claim and a number made under
    `setting` would mislead, and why it would mean little.

    Blocking: another scorer or prompt measures something else, so no delta is
    shown. Caveats: a toy run (the embedded model under a thesis label) or a
    different item count; the delta is shown, marked, and does not count as a
    check of the claim.
    """
    blocking, caveats = [], []
    if claim.scorer and setting.scorer != claim.scorer:
        blocking.append(f"scorer {setting.scorer}, claim {claim.scorer}")
    if claim.prompt and setting.prompt != claim.prompt:
        blocking.append(f"prompt {setting.prompt}, claim {claim.prompt}")
    if setting.scale == "toy":
        caveats.append("toy scale (the embedded model under a thesis label)")
    if claim.n_items is not None and setting.items is not None and setting.items != claim.n_items:
        caveats.append(f"{setting.items} items, claim {claim.n_items}")
    return blocking, caveats


@dataclass
class ClaimCheck:
    """One claim against one of our numbers (or against nothing: status 'no run').

    status: "compared" (a fair check), "caveat" (delta shown but toy scale or a
    different item count), "not comparable" (another scorer/prompt: no delta),
    "no run" (the row exists but lacks this column, or nothing matched).
    """

    claim: Claim
    status: str
    where: str = ""  # our row / comparison label
    ours: float | None = None  # in the claim's unit
    ci: tuple[float, float] | None = None
    reasons: list[str] = field(default_factory=list)
    ours_tuple: tuple[float, int, int, int] | None = None
    run_ids: list[str] = field(default_factory=list)
    scale: str = ""

    @property
    def shows_delta(self) -> bool:
        return self.ours is not None and self.status in ("compared", "caveat")

    @property
    def delta(self) -> float | None:
        return self.ours - self.claim.value if self.shows_delta else None

    @property
    def within_tolerance(self) -> bool | None:
        return self.claim.within_tolerance(self.ours) if self.shows_delta else None

    @property
    def claim_in_ci(self) -> bool | None:
        if self.ci is None or not self.shows_delta:
            return None
        return self.ci[0] - 1e-9 <= self.claim.value <= self.ci[1] + 1e-9


def check(claim: Claim, setting: Setting, ours: float | None, *, where: str,
          ci: tuple[float, float] | None = None, ours_tuple: tuple[float, int, int, int] | None = None,
          run_ids: Iterable[str] = ()) -> ClaimCheck:
    blocking, caveats = comparability(claim, setting)
    status = "not comparable" if blocking else "caveat" if caveats else "compared"
    return ClaimCheck(claim=claim, status=status, where=where, ours=ours, ci=ci, reasons=blocking + caveats,
                      ours_tuple=ours_tuple, run_ids=list(run_ids), scale=setting.scale)


def unchecked(claim: Claim, where: str, reason: str, scale: str = "") -> ClaimCheck:
    """A claim whose row we have but not the number (e.g. the row lacks this column)."""
    return ClaimCheck(claim=claim, status="no run", where=where, reasons=[reason], scale=scale)


def _category(reason: str) -> str:
    """A reason without its numbers, so that missing claims group by why."""
    for prefix, category in (("toy scale", "toy runs only"), ("scorer", "other scorers only"),
                             ("prompt", "other prompts only"), ("this row has no", "the row lacks this column")):
        if reason.startswith(prefix):
            return category
    return "other item counts only" if ", claim " in reason and "items" in reason else reason


def missing_claims(claims: Iterable[Claim], checks: Iterable[ClaimCheck]) -> dict[str, str]:
    """Claims that no comparable full-scale number checks, with what there was instead."""
    by_claim: dict[str, list[ClaimCheck]] = {}
    for c in checks:
        by_claim.setdefault(c.claim.id, []).append(c)
    missing = {}
    for claim in claims:
        found = by_claim.get(claim.id, [])
        if any(c.status == "compared" for c in found):
            continue
        why = sorted({_category(r) for c in found for r in c.reasons})
        missing[claim.id] = "; ".join(why) if why else "no run"
    return missing
