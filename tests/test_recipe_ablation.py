"""+experiment=recipe_ablation: one arm per Stage 1 recipe on the questions both kept; the report
shows both arms under both scorers and marks an arm that needed the bundled records. Also Stage 1's
refusal of a real source without every benchmark file (a ConfigError naming what is missing)."""
from __future__ import annotations

import json

import pytest

from fgrft.config import ConfigError
from fgrft.data import load_training_records
from fgrft.training.job import _load_records
from tests.test_training_job import _compose

BUNDLED = load_training_records({"name": "sample", "format": "fgrft"})


def _write(path, records):
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return path


def _arm(tmp_path, recipe, thesis, plus, *overrides):
    files = (f"recipe_records={{thesis: {_write(tmp_path / 'thesis.jsonl', thesis)}, "
             f"fgrft_plus: {_write(tmp_path / 'plus.jsonl', plus)}}}")
    return _load_records(_compose(["data=fgrft_5k", f"recipe={recipe}", files, *overrides]))


def test_each_recipe_arm_trains_on_the_questions_both_recipes_kept(tmp_path):
    thesis, plus = BUNDLED[:8], BUNDLED[4:12]
    shared = {r.stem_id for r in BUNDLED[4:8]}
    for recipe, own in (("thesis", thesis), ("fgrft_plus", plus)):
        records, origin, matched = _arm(tmp_path, recipe, thesis, plus, "min_id_match=0.5")
        assert {r.stem_id for r in records} == shared
        assert origin.endswith("thesis.jsonl" if recipe == "thesis" else "plus.jsonl")
        assert matched == {"ids_from": origin, "ids_requested": 8, "ids_matched": 4}
        assert "bundled_added" not in matched
    # Half of an arm's ids is below the default min_id_match: the counts, not a quiet smaller arm.
    with pytest.raises(ValueError, match=r"only 4 of the 8 FGRFT question ids .* intersected with "
                                         r"recipe_records\.fgrft_plus"):
        _arm(tmp_path, "thesis", thesis, plus)


def test_a_toy_arm_with_too_few_records_adds_the_bundled_ones_and_full_scale_refuses(tmp_path):
    thesis, plus = BUNDLED[:3], BUNDLED[2:5]  # one question in common
    records, _, matched = _arm(tmp_path, "fgrft_plus", thesis, plus, "min_id_match=0", "min_records=4",
                               "scale=toy")
    assert matched["ids_matched"] == 1 and matched["bundled_added"] == len(BUNDLED) - 1
    assert sorted(r.id for r in records) == sorted(r.id for r in BUNDLED)
    # Enough shared records: nothing added.
    _, _, matched = _arm(tmp_path, "thesis", thesis, plus, "min_id_match=0", "min_records=1", "scale=toy")
    assert "bundled_added" not in matched
    with pytest.raises(ValueError, match=r"1 training records, fewer than min_records=4"):
        _arm(tmp_path, "thesis", thesis, plus, "min_id_match=0", "min_records=4")
    # A recipe that kept nothing (empty records.jsonl) leaves no shared question: all bundled.
    records, _, matched = _arm(tmp_path, "thesis", thesis, [], "min_id_match=0", "min_records=4", "scale=toy")
    assert matched["ids_matched"] == 0 and matched["bundled_added"] == len(BUNDLED)


def test_recipe_records_must_name_every_recipe_and_the_arm(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe_records\.fgrft_plus is not set"):
        _load_records(_compose(["data=fgrft_5k", "recipe=thesis",
                                f"recipe_records={{thesis: {_write(tmp_path / 't.jsonl', BUNDLED)}, "
                                "fgrft_plus: null}"]))
    with pytest.raises(ConfigError, match=r"recipe_records is set but recipe .* is not"):
        _load_records(_compose(["data=fgrft_5k",
                                f"recipe_records={{thesis: {_write(tmp_path / 't.jsonl', BUNDLED)}, "
                                f"fgrft_plus: {tmp_path / 't.jsonl'}}}"]))


def test_preset_sweeps_both_recipes_with_the_thesis_training_settings():
    from hydra import compose, initialize_config_dir

    from fgrft.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=recipe_ablation"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.recipe == "thesis,fgrft_plus"
    assert cfg.evaluate_after is True and set(cfg.recipe_records) == {"thesis", "fgrft_plus"}
    assert cfg.trainer.truncation_side == "left" and cfg.min_records > 0


def test_report_compares_the_recipe_arms_under_both_scorers_and_marks_a_padded_one():
    from fgrft.records import Prediction
    from fgrft.reporting.assemble import build_report
    from fgrft.reporting.collect import Collection
    from fgrft.reporting.eval_runs import eval_run_from_logged, other_scorer_view
    from fgrft.reporting.render import render_markdown
    from fgrft.scoring import score_predictions
    from tests.test_report_support import logged_params, questions

    qs = questions("MedQA_x", 10)

    def arm(recipe, hits, bundled_added):
        preds = [Prediction(id=q.id, source=q.source, sample=0, question=q.question, options=dict(q.options),
                            answer_idx=q.answer_idx, prompt="p",
                            output=f"The answer is {q.answer_idx if i < hits else 'ABCD'[(i + 1) % 4]}")
                 for i, q in enumerate(qs)]
        scored = score_predictions(preds, "strict", prompt="thesis", audit=False)
        rows = [{**p.to_dict(), **b} for p, b in zip(scored.predictions, scored.by_scorer)]
        train = {"data.format": "fgrft", "data.target_format": "thinking", "recipe": recipe, "ids_matched": "3",
                 **({"bundled_added": str(bundled_added)} if bundled_added else {})}
        run = eval_run_from_logged(run_id=recipe * 3, name=recipe, experiment="recipe_ablation",
                                   params=logged_params(qs, model="smol", temperature=0.5, scorer="strict"),
                                   tags={}, metrics_doc=scored.metrics, predictions=scored.predictions,
                                   train_params=train)
        return run, other_scorer_view(run, scored.metrics, rows)

    thesis, thesis_legacy = arm("thesis", 4, 0)
    plus, plus_legacy = arm("fgrft_plus", 7, 11)
    assert (thesis.arm, plus.arm) == ("fgrft:thesis", "fgrft:fgrft_plus")
    report = build_report(Collection(runs=[thesis, plus], rescored=[thesis_legacy, plus_legacy]), [],
                          n_resamples=200)
    md = render_markdown(report)
    section = md.split("## Stage 1 recipes: thesis vs fgrft_plus", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 2
    assert "smol + FGRFT (thesis recipe) |" in rows[0] and "40.0 [" in rows[0] and "| no |" in rows[0]
    assert "smol + FGRFT (fgrft_plus recipe)§ |" in rows[1] and "70.0 [" in rows[1] and "| 11 |" in rows[1]
    assert "§ Bundled records added" in section
    # The paired test puts the project's recipe first, under each scorer.
    pairs = {r.scorer: r for r in report.paired.compared if r.column == "MedQA"}
    assert set(pairs) == {"strict", "thesis"}
    assert pairs["strict"].difference == pytest.approx(0.3)
    assert pairs["strict"].a_label.startswith("smol + FGRFT (fgrft_plus recipe)")


def test_a_real_source_without_every_benchmark_file_is_a_config_error_naming_it(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from fgrft.config import CONF_DIR, register_resolvers, validate
    from fgrft.errors import ConfigError as UserError
    from fgrft.generation.job import contamination_benchmarks
    from tests.test_generation_job import thesis_benchmark_dir

    monkeypatch.delenv("FGRFT_BENCHMARK_DIR", raising=False)

    def cfg(*overrides):
        register_resolvers()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return validate(compose(config_name="generate", overrides=["+experiment=fgrft_data", *overrides]),
                            "generate")

    with pytest.raises(UserError, match=r"benchmark\.dir, which is not set.*eval_data_clinical\.json and "
                                        r"eval_data_medmcqa\.json"):
        contamination_benchmarks(cfg())
    benchmarks = thesis_benchmark_dir(tmp_path / "benchmarks")
    (benchmarks / "eval_data_medmcqa.json").unlink()
    with pytest.raises(UserError, match=r"data file not found: .*eval_data_medmcqa\.json"):
        contamination_benchmarks(cfg(f"benchmark.dir={benchmarks}"))
    assert contamination_benchmarks(cfg("contamination.mode=skip")) is None
