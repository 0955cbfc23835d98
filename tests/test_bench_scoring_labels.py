"""`python -m benchmarks.scoring --labels FILE`: the strict scorer against hand labels."""
import json

import pytest

from benchmarks.scoring import label_agreement, load_labels, print_label_table

OPTIONS = {"A": "Gloves", "B": "Face shield", "C": "Gown", "D": "Mask"}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(model, output, label):
    return {"id": f"{model}-x", "model": model, "options": OPTIONS, "output": output, "label": label}


def test_agreement_wrong_commitments_and_misses_per_model(tmp_path, capsys):
    path = write(tmp_path / "labels.jsonl", [
        row("m1", "The answer is C.", "C"),                 # agree
        row("m1", "The answer is A.", "C"),                 # wrong: another letter
        row("m1", "The answer is A.", "NONE"),              # wrong: committed where the label has none
        row("m2", "Probably the outer layer first.", "C"),  # missed
        row("m2", "A. Face shield", "CONFLICT"),            # agree: CONFLICT counts as NONE
    ])
    table = label_agreement(load_labels(path))
    assert table["m1"] == {"n": 3, "agree": 1, "wrong": 2, "missed": 0}
    assert table["m2"] == {"n": 2, "agree": 1, "wrong": 0, "missed": 1}
    assert table["all"] == {"n": 5, "agree": 2, "wrong": 2, "missed": 1}
    assert list(table)[-1] == "all"
    print_label_table(str(path), table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].split() == ["all", "5", "2", "40.0", "2", "1"]


def test_a_bad_label_names_line_record_and_field(tmp_path):
    path = write(tmp_path / "labels.jsonl", [row("m1", "x", "C"), row("m1", "x", "E")])
    with pytest.raises(SystemExit, match=r"labels.jsonl:2: record m1-x: field 'label' is 'E'"):
        load_labels(path)
    (tmp_path / "missing.jsonl").write_text(json.dumps({"id": "q", "options": OPTIONS, "label": "A"}) + "\n")
    with pytest.raises(SystemExit, match=r"missing.jsonl:1: record q has no field 'output'"):
        load_labels(tmp_path / "missing.jsonl")
