"""Benchmark: in-process scoring time of a thesis-sized run (3,273 items).

    python -m benchmarks.scoring [--repeats N] [--seed S] [--labels FILE]

Outputs are synthetic but shaped like real ones (thinking + final response,
option-by-option discussions, option text only, hedged prose that only the
thesis's difflib rule can "answer", ambiguous, truncated and empty outputs),
300-2,000 characters long. With FGRFT_BENCHMARK_DIR set, the real questions and
option texts of eval_data_clinical.json / eval_data_medmcqa.json are used.
Prints seconds per scorer (target: under 2 s each) and the machine; writes
nothing to disk.

With ``--labels FILE`` (hand-labelled real outputs, one JSON object a line with
``model``, ``options``, ``output`` and ``label``: a letter, ``NONE`` or
``CONFLICT``, the latter counted as NONE) it also prints, per model and in all,
how often the strict extractor agrees with the label, its wrong commitments (a
letter where the label is another letter or NONE: it credits or blames an
answer the response never gave) and its misses (unparsed where the label is a
letter).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

from fgrft.records import Prediction
from fgrft.scoring import get_scorer, score_predictions, strict

THESIS_SIZES = {"MedQA_USLME_test": 1273, "PubMedQA_test": 1000, "MedMCQA_validation": 1000}
TARGET_S = 2.0

# Lower-case clinical prose: no isolated capital letters, so an output built
# only from these sentences reaches the thesis's slow similarity rule.
PROSE = [
    "the presentation points to an underlying metabolic process rather than an infection",
    "laboratory values show a mild normocytic anaemia with an elevated reticulocyte count",
    "the timeline of symptoms over three weeks argues against an acute vascular event",
    "on examination there is tenderness in the right upper quadrant without guarding",
    "the patient's medication history includes a recent course of broad-spectrum antibiotics",
    "imaging would help to exclude a structural lesion before committing to treatment",
    "hmm, the family history of early cardiac death is worth keeping in mind here",
    "wait, the low serum sodium could also explain the confusion and the fatigue",
    "okay, the combination of fever, rash and joint pain narrows the differential",
    "the mechanism involves impaired renal excretion and secondary hormonal changes",
    "this finding is typical of chronic disease and usually improves with the underlying cause",
    "guidelines recommend confirming the diagnosis before starting long-term therapy",
]
WORDS = ("renal hepatic cardiac pulmonary acute chronic primary secondary deficiency "
         "syndrome infection carcinoma stenosis fibrosis insufficiency toxicity disorder "
         "inhibitor antagonist therapy biopsy imaging infusion resection").split()


def _synthetic_items(rng: random.Random) -> list[tuple[str, str, dict[str, str], str]]:
    items = []
    for source, n in THESIS_SIZES.items():
        for i in range(n):
            if source.startswith("PubMedQA"):
                options = {"A": "yes", "B": "no", "C": "maybe"}
            else:
                options = {k: " ".join(rng.sample(WORDS, rng.randint(1, 4))).capitalize()
                           for k in "ABCD"}
            question = f"Question {i}: " + ". ".join(rng.sample(PROSE, 3)) + ". Which is most likely?"
            items.append((source, question, options, rng.choice(list(options))))
    return items


def _real_items(directory: str) -> list[tuple[str, str, dict[str, str], str]]:
    items = []
    for name in ("eval_data_clinical.json", "eval_data_medmcqa.json"):
        data = json.loads((Path(directory) / name).read_text(encoding="utf-8"))
        for source, records in data.items():
            items += [(source, r["question"], r["options"], r["answer_idx"]) for r in records]
    return items


def _prose(rng: random.Random, chars: int) -> str:
    parts, size = [], 0
    while size < chars:
        s = rng.choice(PROSE)
        s = s[0].upper() + s[1:] + "."
        parts.append(s)
        size += len(s) + 1
    return " ".join(parts)


def _output(rng: random.Random, options: dict[str, str], gold: str) -> str:
    """One model output of a randomly chosen realistic shape."""
    letter = gold if rng.random() < 0.65 else rng.choice(list(options))
    other = rng.choice([k for k in options if k != letter] or [letter])
    length = rng.randint(300, 2000)
    shape = rng.random()
    if shape < 0.30:  # FGRFT style: thinking, then a final response naming the letter
        body = _prose(rng, int(length * 0.75))
        return (f"## Thinking\n\n{body}\n\n## Final Response\n\nThe answer is {letter}. "
                f"{options[letter]}. {_prose(rng, length - len(body))}")
    if shape < 0.55:  # base-model style: option-by-option discussion, then a verdict
        lines = [f"{k}. {v}: {_prose(rng, length // (len(options) + 2))}" for k, v in options.items()]
        return "\n".join(lines) + f"\n\nThe correct answer is {letter}."
    if shape < 0.70:  # final response naming the option text only
        return (f"## Thinking\n\n{_prose(rng, length - 120)}\n\n## Final Response\n\n"
                f"The most appropriate choice here is {options[letter].lower()}.")
    if shape < 0.82:  # hedged prose with no letter and no option text: thesis rule 4
        return _prose(rng, length)
    if shape < 0.88:  # two answers with equal standing
        return f"{_prose(rng, length - 40)} The answer is {letter} or {other}."
    if shape < 0.94:  # a changed mind: last statement wins (strict) / head vs tail (thesis)
        half = _prose(rng, length // 2)
        return f"The answer is {other}. {half} Wait, actually the answer is {letter}."
    if shape < 0.99:  # truncated mid-thinking (finish_reason=length)
        return f"## Thinking\n\n{_prose(rng, length)}"[:length]
    return ""


def build_predictions(seed: int = 0) -> list[Prediction]:
    rng = random.Random(seed)
    directory = os.environ.get("FGRFT_BENCHMARK_DIR")
    items = _real_items(directory) if directory else _synthetic_items(rng)
    return [Prediction(id=f"b{i}", source=source, sample=0, question=question, options=options,
                       answer_idx=gold, prompt="", output=_output(rng, options, gold))
            for i, (source, question, options, gold) in enumerate(items)]


def _time_extraction(name: str, predictions: list[Prediction]) -> float:
    strict._compile.cache_clear()  # count compiling each item's patterns, as a fresh run does
    scorer = get_scorer(name)
    start = time.perf_counter()
    for p in predictions:
        scorer.extract(p.output, p.options)
    return time.perf_counter() - start


def _time_full(name: str, predictions: list[Prediction]) -> float:
    strict._compile.cache_clear()
    start = time.perf_counter()
    score_predictions(predictions, name, audit=True)
    return time.perf_counter() - start


NO_ANSWER_LABELS = ("NONE", "CONFLICT")


def load_labels(path: str | Path) -> list[dict]:
    """Labelled outputs from a JSONL file; a clear error names the line and field."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{n}: not JSON ({e})") from None
        for key in ("options", "output", "label"):
            if key not in row:
                raise SystemExit(f"{path}:{n}: record {row.get('id', '?')} has no field {key!r}")
        label = row["label"]
        if label not in NO_ANSWER_LABELS and label not in row["options"]:
            raise SystemExit(f"{path}:{n}: record {row.get('id', '?')}: field 'label' is {label!r}, "
                             f"not an option letter, NONE or CONFLICT")
        rows.append(row)
    return rows


def label_agreement(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per model (and "all"): n, agree, wrong (a letter that is not the label), missed."""
    table: dict[str, dict[str, int]] = {}
    for row in rows:
        gold = None if row["label"] in NO_ANSWER_LABELS else row["label"]
        got = strict.extract(row["output"] or "", row["options"]).letter
        for key in (row.get("model", "?"), "all"):
            t = table.setdefault(key, {"n": 0, "agree": 0, "wrong": 0, "missed": 0})
            t["n"] += 1
            if got == gold:
                t["agree"] += 1
            elif got is not None:
                t["wrong"] += 1
            else:
                t["missed"] += 1
    table["all"] = table.pop("all")  # last row
    return table


def print_label_table(path: str, table: dict[str, dict[str, int]]) -> None:
    print(f"labels: {path}")
    print(f"{'model':12s} {'n':>4s} {'agree':>6s} {'%':>6s} {'wrong':>6s} {'missed':>7s}")
    for model, t in table.items():
        print(f"{model:12s} {t['n']:4d} {t['agree']:6d} {100 * t['agree'] / t['n']:6.1f} "
              f"{t['wrong']:6d} {t['missed']:7d}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", metavar="FILE",
                        help="hand-labelled outputs (JSONL): print the strict scorer's agreement")
    args = parser.parse_args(argv)
    if args.labels:
        rows = load_labels(args.labels)
        strict._compile.cache_clear()
        start = time.perf_counter()
        table = label_agreement(rows)
        print_label_table(args.labels, table)
        print(f"labelled items scored in {time.perf_counter() - start:.3f} s")

    predictions = build_predictions(args.seed)
    lengths = [len(p.output) for p in predictions]
    data = ("real questions (FGRFT_BENCHMARK_DIR)" if os.environ.get("FGRFT_BENCHMARK_DIR")
            else "synthetic")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"items: {len(predictions)} ({data}); output chars median {statistics.median(lengths):.0f}, "
          f"max {max(lengths)}")
    ok = True
    for name in ("strict", "thesis"):
        times = [_time_extraction(name, predictions) for _ in range(args.repeats)]
        best = min(times)
        ok &= best < TARGET_S
        verdict = "" if best < TARGET_S else "  OVER TARGET"
        print(f"{name:7s} extract: {best:.3f} s best of {args.repeats} "
              f"({1e3 * best / len(predictions):.3f} ms/item){verdict}")
    for name in ("strict", "thesis"):
        print(f"{name:7s} score_predictions with audit (both scorers + metrics): "
              f"{_time_full(name, predictions):.3f} s")
    rules = {}
    for name in ("strict", "thesis"):
        scorer = get_scorer(name)
        counts: dict[str, int] = {}
        for p in predictions:
            rule = scorer.extract(p.output, p.options).rule
            counts[rule] = counts.get(rule, 0) + 1
        rules[name] = counts
    print("rules fired:", json.dumps(rules))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
