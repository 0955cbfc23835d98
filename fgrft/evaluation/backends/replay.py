"""`inference=replay`: stored outputs in, predictions out, no model loaded.

Reads the project's own ``predictions.jsonl`` (or the run directory holding
it) or the thesis's prediction files (a JSON list of objects with
``question``, ``options``, ``answer_idx``, ``output`` and an optional
``source``; other fields are ignored).

A replayed run of this project keeps its lineage: the ``model`` and
``temperature`` groups come from the run's ``config.yaml`` (model label,
checkpoint, temperature, seed) and the checkpoint's lineage from its
``fgrft.json``, so a replayed fine-tuned run stays in its data arm. What the
command line sets explicitly wins.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

from fgrft.records import (CONFIG_FILE, LETTERS, LINEAGE_FILE, PREDICTIONS_FILE, Prediction, RecordError, item_id,
                           read_jsonl)

REQUIRED = ("question", "options", "answer_idx", "output")
# Config groups a replay takes from the replayed run unless the command line sets them.
LINEAGE_GROUPS = ("model", "temperature")


def replay_file(path: str | Path) -> Path:
    """The predictions file a replay reads: ``path`` itself, or a run directory's predictions.jsonl."""
    path = Path(path)
    if path.is_dir():
        if not (path / PREDICTIONS_FILE).is_file():
            raise RecordError(f"the run directory has no {PREDICTIONS_FILE}", file=path)
        return path / PREDICTIONS_FILE
    return path


def replay_run_dir(path: str | Path) -> Path | None:
    """The project run directory a replay comes from (it holds config.yaml), or None."""
    directory = replay_file(path).parent
    return directory if (directory / CONFIG_FILE).is_file() else None


def with_replay_lineage(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """``cfg`` with the replayed run's model and temperature groups, keys set by ``overrides`` kept."""
    if OmegaConf.select(cfg, "inference.backend", default=None) != "replay":
        return cfg
    path = OmegaConf.select(cfg, "inference.path", default=None, throw_on_missing=False)
    run_dir = replay_run_dir(path) if path else None
    if run_dir is None:
        return cfg
    source = OmegaConf.load(run_dir / CONFIG_FILE)
    explicit = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    with open_dict(cfg):
        for group in LINEAGE_GROUPS:
            if group in explicit or group not in source:
                continue
            for key, value in source[group].items():
                if f"{group}.{key}" not in explicit:
                    cfg[group][key] = value
    return cfg


def replay_lineage(path: str | Path, model_path: str | None) -> dict[str, Any]:
    """The replayed run's ``fgrft.json``: beside its predictions, else in its checkpoint."""
    run_dir = replay_run_dir(path)
    for directory in (run_dir, Path(model_path) if model_path else None):
        if directory is not None and (directory / LINEAGE_FILE).is_file():
            return json.loads((directory / LINEAGE_FILE).read_text())
    return {}


def check_replay_file(path: str | Path) -> Path:
    """The file a replay reads; a RecordError naming it if it is not there."""
    path = replay_file(path)
    if not path.is_file():
        raise RecordError("replay file does not exist", file=path)
    return path


def load_replay(path: str | Path, render_prompt: Callable[[str, dict[str, str]], str]) -> list[Prediction]:
    """Predictions to score again. `render_prompt(question, options)` fills a missing prompt."""
    path = check_replay_file(path)
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise RecordError("empty file", file=path)
    if text.lstrip().startswith("["):
        try:
            rows = list(enumerate(json.loads(text)))
        except json.JSONDecodeError as e:
            raise RecordError(f"broken JSON at line {e.lineno}: {e.msg}", file=path) from None
    else:
        rows = list(read_jsonl(path))
    if not rows:
        raise RecordError("no predictions in file", file=path)
    preds = [_prediction(row, i, path, render_prompt) for i, row in rows]
    seen: dict[tuple[str, int], int] = {}
    for i, p in enumerate(preds):
        key = (p.id, p.sample)
        if key in seen:
            raise RecordError(f"duplicate item (id {p.id}, sample {p.sample}) also at record {seen[key]}",
                              file=path, index=i, field="question")
        seen[key] = i
    return preds


def _prediction(row: Any, index: int, path: Path,
                render_prompt: Callable[[str, dict[str, str]], str]) -> Prediction:
    if not isinstance(row, dict):
        raise RecordError("expected a JSON object", file=path, index=index)
    for name in REQUIRED:
        if name not in row:
            raise RecordError("missing field", file=path, index=index, field=name)
    options = row["options"]
    if not isinstance(options, dict) or not options or not all(
            isinstance(k, str) and k in LETTERS and isinstance(v, str) for k, v in options.items()):
        raise RecordError("options must map letters A-N to option texts", file=path, index=index,
                          field="options")
    gold = row["answer_idx"]
    if not isinstance(gold, str) or gold.strip().upper() not in options:
        raise RecordError(f"gold letter {gold!r} is not among the options {sorted(options)}", file=path,
                          index=index, field="answer_idx")
    output = row["output"]
    if output is None:
        output = ""
    if not isinstance(output, str):
        raise RecordError("output must be a string", file=path, index=index, field="output")
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise RecordError("question must be a non-empty string", file=path, index=index, field="question")
    return Prediction(
        id=row.get("id") or item_id(question, options),
        source=row.get("source") or "unknown",
        sample=int(row.get("sample", 0)),
        question=question,
        options=options,
        answer_idx=gold.strip().upper(),
        prompt=row.get("prompt") or render_prompt(question, options),
        output=output,
        finish_reason=row.get("finish_reason"),
    )
