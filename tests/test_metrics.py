"""metrics.json, scorer_audit.jsonl rows and MLflow names built from predictions."""
import json

import pytest

from fgrft.records import Prediction
from fgrft.scoring import mlflow_metrics, score_predictions
from fgrft.scoring.metrics import correct_by_id
from fgrft.scoring.stats import wilson_interval

ABCD = {"A": "Hypertension", "B": "Diabetes mellitus", "C": "Asthma", "D": "Gout"}
YES_NO = {"A": "yes", "B": "no", "C": "maybe"}
BLOCK_KEYS = {"accuracy", "correct", "total", "unparsed", "ci_low", "ci_high"}
THESIS_KEYS = BLOCK_KEYS | {"head_correct", "tail_correct", "dropped_empty"}


def pred(i, output, gold="A", source="MedQA_sample", options=ABCD, sample=0):
    return Prediction(id=f"q{i}", source=source, sample=sample, question=f"question {i}",
                      options=options, answer_idx=gold, prompt="p", output=output)


def run():
    return [
        pred(0, "The answer is A."),                                   # both right
        pred(1, "the answer is B ... the answer is A"),                # strict A; thesis head B, tail A
        pred(2, "Hypertension or asthma, hard to say."),               # strict unparsed; thesis rule 3
        pred(3, ""),                                                   # empty
        pred(4, "Answer: C", gold="C"),
        pred(5, "Yes, it helps.", source="PubMedQA_sample", options=YES_NO),
        pred(6, "the answer is maybe", gold="C", source="PubMedQA_sample", options=YES_NO),
    ]


def test_strict_metrics_follow_the_contract():
    scored = score_predictions(run(), "strict", prompt="thesis",
                               throughput={"items_per_s": 3.5, "output_tokens_per_s": 900.0})
    m = scored.metrics
    assert set(m) == {"schema_version", "scorer", "prompt", "per_source", "overall", "throughput", "by_scorer"}
    assert (m["schema_version"], m["scorer"], m["prompt"]) == (1, "strict", "thesis")
    assert m["throughput"] == {"items_per_s": 3.5, "output_tokens_per_s": 900.0}
    medqa = m["per_source"]["MedQA_sample"]
    assert set(medqa) == BLOCK_KEYS
    # Every item counts, the empty one included; unparsed = item 2 and the empty item 3.
    assert (medqa["correct"], medqa["total"], medqa["unparsed"]) == (3, 5, 2)
    assert medqa["accuracy"] == 3 / 5
    assert (medqa["ci_low"], medqa["ci_high"]) == wilson_interval(3, 5)
    assert m["overall"]["correct"] == 5 and m["overall"]["total"] == 7
    assert m["overall"]["accuracy"] == 5 / 7
    json.dumps(m)  # serialisable as metrics.json


def test_strict_fills_predictions():
    preds = score_predictions(run(), "strict").predictions
    assert [p.extracted for p in preds] == ["A", "A", None, None, "C", "A", "C"]
    assert [p.correct for p in preds] == [True, True, False, False, True, True, True]
    assert "head" not in preds[0].to_dict()


def test_thesis_metrics_choose_one_side_per_source():
    scored = score_predictions(run(), "thesis", prompt="thesis")
    m = scored.metrics
    medqa = m["per_source"]["MedQA_sample"]
    assert set(medqa) == THESIS_KEYS
    # heads: A, B, asthma-is-latest-first (C), C -> 2 right; tails: A, A, asthma (C), C -> 3 right.
    assert (medqa["head_correct"], medqa["tail_correct"]) == (2, 3)
    assert (medqa["correct"], medqa["total"], medqa["dropped_empty"], medqa["unparsed"]) == (3, 4, 1, 0)
    assert medqa["accuracy"] == 3 / 4
    preds = scored.predictions
    assert (preds[1].head, preds[1].tail, preds[1].extracted, preds[1].correct) == ("B", "A", "A", True)
    assert (preds[3].extracted, preds[3].correct) == (None, False)
    assert preds[1].to_dict()["head"] == "B"
    assert m["overall"]["total"] == 6 and m["overall"]["dropped_empty"] == 1
    assert m["throughput"] == {"items_per_s": None, "output_tokens_per_s": None}


def test_thesis_takes_the_head_side_when_strictly_better_and_tail_on_a_tie():
    head_better = [pred(0, "the answer is A, no, the answer is B"), pred(1, "the answer is A")]
    scored = score_predictions(head_better, "thesis")
    assert [p.extracted for p in scored.predictions] == ["A", "A"]
    tie = [pred(0, "the answer is A, no, the answer is B"), pred(1, "the answer is B; the answer is A")]
    scored = score_predictions(tie, "thesis")
    assert [p.extracted for p in scored.predictions] == ["B", "A"]


def test_missing_source_is_unknown():
    m = score_predictions([pred(0, "Answer: A", source="")], "strict").metrics
    assert list(m["per_source"]) == ["unknown"]


def test_audit_lists_disagreements_with_both_extractions():
    scored = score_predictions(run(), "strict")
    rows = {r["id"]: r for r in scored.audit}
    # q2: strict unparsed vs thesis C. Agreements (q0, q1 tail, q4, q5, q6) and the
    # empty item (neither answers) are not listed.
    assert set(rows) == {"q2"}
    row = rows["q2"]
    assert row["schema_version"] == 1
    assert row["strict"]["extracted"] is None and row["strict"]["rule"] == "ambiguous"
    assert row["thesis"]["extracted"] == "C" and row["thesis"]["head"] == "C"
    assert row["thesis"]["rule"] == "option_text"
    assert row["output_tail"].startswith("Hypertension")
    json.dumps(row)
    assert score_predictions(run(), "strict", audit=False).audit == []


def test_multi_sample_metrics():
    preds = []
    for s in range(3):
        preds += [
            pred(0, "The answer is A.", sample=s),                       # always right
            pred(1, "The answer is B." if s else "The answer is A.", sample=s),  # right once
            pred(2, "The answer is C." if s == 2 else "", gold="C", sample=s),
            pred(3, "The answer is D.", gold="B", sample=s),             # always wrong
        ]
    m = score_predictions(preds, "strict", n_resamples=2000).metrics
    overall = m["overall"]
    # Accuracy pools the 12 (item, sample) pairs.
    assert (overall["correct"], overall["total"], overall["unparsed"]) == (5, 12, 2)
    per_sample = [2 / 4, 1 / 4, 2 / 4]
    samples = m["samples"]
    assert samples["n"] == 3
    assert samples["mean"] == pytest.approx(sum(per_sample) / 3)
    assert samples["sd"] == pytest.approx(0.1443375673, rel=1e-6)
    # Votes: q0 A (right), q1 B (wrong), q2 C (right: empty samples do not vote), q3 D.
    assert samples["majority_vote"] == 0.5
    # The CI resamples items (4 of them), so it is seeded and far from degenerate.
    assert 0.0 <= overall["ci_low"] < 5 / 12 < overall["ci_high"] <= 1.0
    again = score_predictions(preds, "strict", n_resamples=2000).metrics
    assert again["overall"]["ci_low"] == overall["ci_low"]


def test_mlflow_metric_names():
    m = score_predictions(run(), "strict").metrics
    flat = mlflow_metrics(m)
    keys = ("accuracy", "ci_low", "ci_high", "unparsed")
    sources = ("MedQA_sample", "PubMedQA_sample")
    assert set(flat) == ({f"{k}/{s}" for k in keys for s in sources} | {"accuracy/overall"}
                         | {f"{scorer}/{k}/{s}" for scorer in ("strict", "thesis") for k in keys
                            for s in (*sources, "overall")})
    assert flat["unparsed/MedQA_sample"] == 2.0
    assert flat["accuracy/overall"] == m["overall"]["accuracy"]
    assert flat["strict/accuracy/overall"] == m["overall"]["accuracy"]
    assert flat["thesis/accuracy/MedQA_sample"] == m["by_scorer"]["thesis"]["per_source"]["MedQA_sample"]["accuracy"]
    assert all(isinstance(v, float) for v in flat.values())


@pytest.mark.parametrize("configured", ["strict", "thesis"])
def test_both_scorers_score_the_same_outputs(configured):
    scored = score_predictions(run(), configured)
    m = scored.metrics
    assert set(m["by_scorer"]) == {"strict", "thesis"}
    # The configured scorer's blocks are the top level; each scorer's are what
    # configuring it alone gives.
    assert m["by_scorer"][configured]["per_source"] == m["per_source"]
    for name in ("strict", "thesis"):
        alone = score_predictions(run(), name).metrics
        assert m["by_scorer"][name]["overall"] == alone["overall"]
        assert m["by_scorer"][name]["per_source"] == alone["per_source"]
    rows = scored.by_scorer
    assert [r["strict_extracted"] for r in rows] == ["A", "A", None, None, "C", "A", "C"]
    assert [r["strict_correct"] for r in rows] == [True, True, False, False, True, True, True]
    assert (rows[1]["thesis_head"], rows[1]["thesis_tail"]) == ("B", "A")
    assert (rows[3]["thesis_head"], rows[3]["thesis_correct"]) == (None, False)  # empty: dropped
    thesis = score_predictions(run(), "thesis").predictions
    assert [r["thesis_correct"] for r in rows] == [p.correct for p in thesis]
    # The configured scorer's own fields are untouched by the other scorer's reading.
    assert [p.extracted for p in scored.predictions] == [
        p.extracted for p in score_predictions(run(), configured).predictions]


def test_correct_by_id_and_unknown_scorer():
    preds = score_predictions(run(), "strict").predictions
    assert correct_by_id(preds)["q1"] is True
    with pytest.raises(ValueError):
        score_predictions(run(), "lenient")


def test_multi_sample_thesis_drops_all_empty_items_from_the_vote():
    preds = []
    for s in range(2):
        preds += [pred(0, "the answer is A", sample=s),
                  pred(1, "", sample=s),                                   # empty in every sample
                  pred(2, "the answer is B" if s else "the answer is C", gold="C", sample=s)]
    m = score_predictions(preds, "thesis", n_resamples=500).metrics
    assert (m["overall"]["total"], m["overall"]["dropped_empty"], m["overall"]["correct"]) == (4, 2, 3)
    # Votes: q0 A (right); q2 tie C (sample 0) vs B -> C (right); q1 has no vote at all.
    assert m["samples"]["majority_vote"] == 1.0
    assert m["samples"]["mean"] == pytest.approx(0.75) and m["samples"]["n"] == 2
