"""Stage 2 job: verified records -> supervised fine-tuning -> ``checkpoint/`` + ``summary.json``.

1. Everything bad input can break is checked before a model loads: trainer
   settings, the model entry, the records, contamination against the
   configured benchmark (overlapping questions are dropped and listed), and
   tokenization (prompt fits, assistant tokens present).
2. TRL's SFTTrainer trains, resuming from the newest complete checkpoint in
   this run directory when an earlier attempt was interrupted (re-running the
   same command lands in the same directory and MLflow run). One process
   trains here; more processes or ZeRO-3 run as ranks started by
   ``accelerate launch`` (distributed.py), each calling ``fit``.
3. The final checkpoint, ``summary.json`` and the MLflow params/metrics.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fgrft.config import ConfigError
from fgrft.data import (OverlapSettings, check_contamination, load_training_records, overlapping_train_ids,
                        select_records)
from fgrft.prompts import load_template
from fgrft.records import SUMMARY_FILE, TrainingRecord
from fgrft.tracking import TrackedRun

from .batching import effective_batching
from .evaluate_after import EvaluationJob
from .launch import is_distributed, world_size
from .formatting import TokenizedSet, tokenize_records
from .slurm import start_main_node
from .lineage import (CHECKPOINTS_DIR, FINAL_DIR, claim_checkpoints, latest_checkpoint, read_lineage,
                      save_final_checkpoint)

log = logging.getLogger(__name__)



@dataclass
class Prepared:
    """What training needs, all checked: tokenizer, examples, where they came from."""

    model_location: str
    base_model: str
    tokenizer: Any
    tokenized: TokenizedSet
    data_hash: str
    contamination: dict[str, Any]
    batching: str
    ids_matched: dict[str, Any] | None = None  # arms restricted to the FGRFT question ids


def train_job(cfg: DictConfig, tracked: TrackedRun, evaluate: EvaluationJob | None = None) -> dict[str, Any]:
    """Train (or finish a resumed run) and, with ``evaluate_after=true``, evaluate the checkpoint
    through ``evaluate``: the evaluation job, passed in by the entrypoint (training never imports it)."""
    started = time.perf_counter()
    run_dir = tracked.job.run_dir
    nodes = start_main_node(cfg, run_dir)  # None on one machine; SLURM variables are checked before any work
    prepared = prepare(cfg)
    finished = _finished_summary(run_dir)
    if finished is not None:
        if finished.get("data_hash") != prepared.data_hash:
            raise RuntimeError(f"{run_dir} finished training on other data (data_hash {finished.get('data_hash')}, "
                               f"now {prepared.data_hash}); pick another hydra.run.dir to train on this data")
        log.info("this run already finished (%s); remove %s to train again", run_dir / FINAL_DIR, run_dir)
        _register_checkpoint(cfg, run_dir / FINAL_DIR, tracked)
        return finished
    lineage = {"base_model": prepared.base_model, "data_hash": prepared.data_hash,
               "train_run_id": tracked.run_id}
    tracked.log_params({**lineage, "model_label": cfg.model.name, "data_label": cfg.data.name,
                        "batching": prepared.batching, "benchmark": cfg.benchmark.name,
                        "world_size": cfg.trainer.num_processes * cfg.trainer.num_machines,
                        **(prepared.ids_matched or {})})

    _log_training_data(cfg, prepared)

    claim_checkpoints(run_dir / CHECKPOINTS_DIR, prepared.data_hash)
    # Resolved once here: ranks must not race to remove an incomplete checkpoint.
    resume = latest_checkpoint(run_dir / CHECKPOINTS_DIR)
    if resume is not None:
        log.info("resuming from %s", resume)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if is_distributed(trainer_cfg):
        from .distributed import launch_ranks

        summary = launch_ranks(cfg, tracked, lineage, resume, nodes)
    else:
        summary = fit(cfg, prepared, run_dir, lineage, resume)
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    tracked.log_metrics({k: summary[k] for k in ("padding_fraction", "tokens_per_s", "final_loss", "steps",
                                                  "tokens", "truncated_samples", "wall_s")}, step=summary["steps"])
    log.info("trained %d steps on %d examples: final loss %s, padding %.1f%%, %.0f tokens/s; checkpoint %s",
             summary["steps"], summary["examples"], summary["final_loss"], 100 * summary["padding_fraction"],
             summary["tokens_per_s"], run_dir / FINAL_DIR)
    _register_checkpoint(cfg, run_dir / FINAL_DIR, tracked)
    if cfg.evaluate_after:
        from .evaluate_after import evaluate_checkpoint

        if evaluate is None:
            raise ValueError("evaluate_after=true needs the evaluation job: run it through python -m fgrft.train")
        summary["evaluation"] = evaluate_checkpoint(cfg, run_dir / FINAL_DIR, run_dir, evaluate)
    # Written last: its presence (with checkpoint/) marks the job as done for a re-run.
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _log_training_data(cfg: DictConfig, prepared: Prepared) -> None:
    from fgrft.data import bundled_path
    from fgrft.mlflow_lineage import TRAINING, log_dataset

    spec = cfg.data
    records_file = _recipe_records(cfg).get(cfg.get("recipe")) or cfg.get("fgrft_records")
    path = spec.get("path") or (records_file if spec.get("format") == "fgrft" else None)
    hub_id = spec.get("hub_id")
    if path:
        origin, hub = str(path), False
    elif spec.get("bundled"):
        origin, hub = str(bundled_path(spec.bundled)), False
    else:
        origin, hub = hub_id, bool(hub_id)
    log_dataset(spec.name, origin, prepared.data_hash, [e.record_id for e in prepared.tokenized.examples],
                TRAINING, hub=hub)


def _register_checkpoint(cfg: DictConfig, checkpoint: Path, tracked: TrackedRun) -> None:
    """The final checkpoint as an MLflow model (external: the weights stay where they are)."""
    from fgrft.mlflow_lineage import register_checkpoint

    lineage = read_lineage(checkpoint)
    if lineage is not None:
        register_checkpoint(checkpoint, f"{cfg.model.name}+{cfg.data.name}", lineage, tracked.run_id)


def fit(cfg: DictConfig, prepared: Prepared, run_dir: Path, lineage: dict[str, Any], resume: Path | None,
        **sft_overrides: Any) -> dict[str, Any]:
    """Train and save the final checkpoint; every rank of a distributed job runs this."""
    started = time.perf_counter()
    trainer = _trainer(cfg, prepared, run_dir, **sft_overrides)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    steps = trainer.state.global_step
    model, state_dict = _final_weights(trainer)  # a collective under ZeRO-3: every rank calls it
    if trainer.is_world_process_zero():
        save_final_checkpoint(model, prepared.tokenizer, run_dir / FINAL_DIR, {**lineage, "steps": steps},
                              dtype=_base_dtype(prepared.model_location), state_dict=state_dict)
    trainer.accelerator.wait_for_everyone()
    summary = _summary(trainer, prepared, resume, wall_s=time.perf_counter() - started)
    summary["world_size"] = trainer.accelerator.num_processes
    return summary


# --- 1. checks and data ---------------------------------------------------------------

def prepare(cfg: DictConfig) -> Prepared:
    """Load, check and tokenize everything; nothing here trains or loads model weights."""
    from fgrft.models import check_model_spec, resolve_model

    _check_trainer(cfg.trainer)
    model_spec = OmegaConf.to_container(cfg.model, resolve=True)
    check_model_spec(model_spec, cfg.scale)  # a missing model.path fails here, before any data work
    records, origin, ids_matched = _load_records(cfg)
    contamination, records = _drop_contaminated(cfg, records, origin)
    resolved = resolve_model(model_spec, cfg.paths.cache, scale=cfg.scale)
    tokenizer = _load_tokenizer(resolved.location, cfg.model.name)
    tokenized, digest = tokenize_records(
        tokenizer, records, prompt_template=load_template(cfg.prompt.template),
        target_format=cfg.data.target_format, training_template=_training_template(tokenizer, cfg.model),
        max_seq_len=cfg.trainer.max_seq_len, stock_template=tokenizer.chat_template, origin=origin,
        truncation_side=cfg.trainer.truncation_side)
    if tokenized.truncated_ids:
        log.warning("%d of %d examples are longer than trainer.max_seq_len=%d; cut from the %s (trainer.truncation_side)",
                    len(tokenized.truncated_ids), len(tokenized.examples), cfg.trainer.max_seq_len,
                    cfg.trainer.truncation_side)
    base = resolved.hub_id or resolved.builder or str(resolved.path)
    if resolved.path is not None and (parent := read_lineage(resolved.path)):
        base = parent.get("base_model") or base  # a checkpoint trained here keeps its original base
    return Prepared(model_location=resolved.location, base_model=base, tokenizer=tokenizer,
                    tokenized=tokenized, data_hash=digest, contamination=contamination,
                    batching=effective_batching(cfg.trainer.batching, cfg.trainer.attn_implementation),
                    ids_matched=ids_matched)


def _check_trainer(t: DictConfig) -> None:
    if t.num_processes < 1 or t.num_machines < 1 or not 0 <= t.machine_rank < t.num_machines:
        raise ConfigError("trainer.num_processes and trainer.num_machines must be >= 1 and "
                          "0 <= trainer.machine_rank < trainer.num_machines")
    if t.num_machines > 1 and not t.main_process_ip:
        raise ConfigError(f"trainer={t.name}: num_machines={t.num_machines} needs trainer.main_process_ip "
                          "(the address of machine_rank 0)")
    if t.distributed == "zero3" and t.lora:
        # Merging adapters needs the full weights on one rank; ZeRO-3 only has shards.
        raise ConfigError(f"trainer={t.name}: trainer.lora with distributed=zero3 is not supported; "
                          "use distributed=ddp for LoRA")
    if t.max_seq_len < 1 or t.micro_batch_size < 1 or t.grad_accum < 1:
        raise ConfigError("trainer.max_seq_len, trainer.micro_batch_size and trainer.grad_accum must be >= 1")
    if t.global_batch_size is not None and t.global_batch_size != t.micro_batch_size * t.grad_accum * world_size(t):
        raise ConfigError(f"trainer.grad_accum={t.grad_accum} makes a global batch of {t.micro_batch_size} x "
                          f"{t.grad_accum} x {world_size(t)} ranks, not trainer.global_batch_size={t.global_batch_size}; "
                          "leave grad_accum to the preset or set trainer.global_batch_size=null")
    if t.max_steps == 0 or (t.max_steps < 0 and t.epochs <= 0):
        raise ConfigError("nothing to train: set trainer.max_steps > 0 or trainer.epochs > 0")


def _load_records(cfg: DictConfig) -> tuple[list[TrainingRecord], str, dict[str, Any] | None]:
    """The training records, and for an ablation arm restricted to shared question ids, how many matched.

    An arm's ids are the FGRFT ids (``fgrft_records``) that the ``shared_ids_with`` data set also
    holds (by stem_id), so every arm of an ablation trains on the same questions; a naive-CoT arm
    takes the FGRFT ids even without ``shared_ids_with``. An arm that finds fewer than
    ``min_id_match`` of the FGRFT ids fails with the counts instead of training on fewer.

    A recipe-ablation arm (``recipe_records``: a Stage 1 records file per recipe) trains on its
    ``recipe``'s file, restricted to the ids every recipe's file holds. An arm left with fewer than
    ``min_records`` records adds the bundled ones at toy scale (``bundled_added``)."""
    spec = OmegaConf.to_container(cfg.data, resolve=True)
    cache = str(Path(cfg.paths.cache) / "datasets")
    recipe_files = _recipe_records(cfg)
    if recipe_files and (spec.get("format") != "fgrft" or spec.get("path")):
        raise ConfigError("recipe_records: a recipe-ablation arm trains on FGRFT records (data.format=fgrft) "
                          "from its recipe's file; unset data.path")
    fgrft_file = recipe_files[cfg.recipe] if recipe_files else cfg.get("fgrft_records")
    if spec.get("format") == "fgrft" and fgrft_file and not spec.get("path"):
        spec["path"], spec["n"] = fgrft_file, None  # the ids are the file's: no second draw
    origin = spec.get("path") or f"data={spec.get('name')}"
    shared_with = cfg.get("shared_ids_with")
    restricted = spec.get("format") == "naive_cot" and not spec.get("path")
    if restricted:
        spec["n"] = None  # the FGRFT ids pick the questions, not a seeded draw of this set
    records = _records_of(spec["path"], cache) if recipe_files else load_training_records(spec, cache_dir=cache)
    ids = None
    if restricted or shared_with or recipe_files:
        # An arm that trains on the FGRFT file itself has its ids in hand: no second read.
        own = bool(fgrft_file) and spec.get("path") == fgrft_file
        ids = (str(fgrft_file), [r.stem_id for r in records]) if own else _fgrft_ids(cfg, cache, fgrft_file)
    matched = None
    if ids is not None:
        ids_origin, fgrft_ids = ids
        # The other sets every arm needs too: each arm trains on the ids all of them hold.
        others = [(f"data={shared_with}", load_training_records(_shared_spec(cfg, shared_with), cache_dir=cache))
                  ] if shared_with else []
        others += [(f"recipe_records.{r}", _records_of(path, cache)) for r, path in recipe_files.items()
                   if r != cfg.recipe]
        wanted = fgrft_ids
        for _, other_records in others:
            other = {r.stem_id for r in other_records}
            wanted = [i for i in wanted if i in other]
        picked = select_records(records, wanted, key="stem_id")
        matched = {"ids_from": ids_origin, "ids_requested": len(set(fgrft_ids)), "ids_matched": picked.matched}
        also = "".join(f" and {name}" for name, _ in others)
        log.info("%s: %d of %d FGRFT question ids found (by stem_id) in %s%s", cfg.data.name, picked.matched,
                 matched["ids_requested"], origin, also)
        share = picked.matched / matched["ids_requested"] if matched["ids_requested"] else 0.0
        if share < cfg.min_id_match:
            raise ValueError(
                f"{origin}: only {picked.matched} of the {matched['ids_requested']} FGRFT question ids "
                f"({share:.1%}) are available to this arm ({ids_origin}"
                f"{also.replace(' and ', ' intersected with ', 1)}); min_id_match="
                f"{cfg.min_id_match} needs at least {cfg.min_id_match:.0%}. The arms would not compare the "
                f"same questions; lower min_id_match to accept it")
        records = picked.records
    if len(records) < cfg.min_records:
        records, added = _add_bundled(cfg, records, origin, cache)
        matched = {**(matched or {}), "bundled_added": added}
    if not records:
        raise ValueError(f"{origin}: the training set is empty")
    return records, origin, matched


def _recipe_records(cfg: DictConfig) -> dict[str, str]:
    """A recipe-ablation arm's Stage 1 records files by recipe ({} when this is not such an arm)."""
    files = cfg.get("recipe_records")
    if not files:
        return {}
    if cfg.get("recipe") is None:
        raise ConfigError("recipe_records is set but recipe (which recipe's records this arm trains on) is not")
    unset = [r for r, path in files.items() if not path]
    if unset or cfg.recipe not in files:
        missing = unset or [cfg.recipe]
        raise ConfigError(f"recipe_records.{missing[0]} is not set: the records.jsonl of "
                          f"`python -m fgrft.generate recipe={missing[0]}`")
    if cfg.get("fgrft_records"):
        raise ConfigError("set fgrft_records or recipe_records, not both (an arm trains on one records file)")
    return {r: str(path) for r, path in files.items()}


def _records_of(path: str, cache: str) -> list[TrainingRecord]:
    """A Stage 1 records file; empty when that run kept nothing (its file has no lines)."""
    file = Path(path).expanduser()
    if file.is_file() and file.stat().st_size < 64 and not file.read_text(encoding="utf-8").strip():
        return []
    return load_training_records({"name": "fgrft_records", "path": str(file), "format": "fgrft"},
                                 cache_dir=cache)


def _add_bundled(cfg: DictConfig, records: list[TrainingRecord], origin: str,
                 cache: str) -> tuple[list[TrainingRecord], int]:
    """At toy scale, an arm with fewer than ``min_records`` records adds the bundled records of its
    format (those it does not hold already); the count goes to summary.json, MLflow and the report.
    At full scale such an arm fails instead: padding would train on other questions than the arms'."""
    if cfg.scale != "toy":
        raise ValueError(f"{origin}: {len(records)} training records, fewer than min_records={cfg.min_records}; "
                         "only a toy-scale run adds the bundled records (lower min_records to train on these)")
    have = {r.id for r in records}
    option = "sample" if cfg.data.format == "fgrft" else "sample_naive"
    bundled = [r for r in load_training_records({"name": option}, cache_dir=cache) if r.id not in have]
    log.warning("%s: %d records, fewer than min_records=%d: adding the %d bundled records of data=%s (the "
                "report marks this arm)", origin, len(records), cfg.min_records, len(bundled), option)
    return records + bundled, len(bundled)


def _shared_spec(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The data option ``name``'s spec, resolved at the job's scale, with every record (no draw)."""
    from fgrft.config import CONF_DIR
    from fgrft.config.scale import apply_scale

    path = CONF_DIR / "data" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"shared_ids_with={name!r} is not a data option (no {path})")
    shadow = OmegaConf.create({"scale": cfg.scale, "data": OmegaConf.load(path)})
    spec = OmegaConf.to_container(apply_scale(shadow).data, resolve=True)
    spec["n"] = None
    return spec


def _fgrft_ids(cfg: DictConfig, cache: str, fgrft_file: str | None) -> tuple[str, list[str]] | None:
    """Stem ids of the FGRFT arm's questions: its records file, or at toy scale the bundled sample."""
    if fgrft_file:
        source, records = str(fgrft_file), _records_of(fgrft_file, cache)
    elif cfg.scale == "toy":
        source = "data=sample"
        records = load_training_records({"name": "sample", "format": "fgrft", "target_format": "thinking"},
                                        cache_dir=cache)
    else:
        return None
    # Stem ids: the naive-CoT set may lack parsed options, so ids over question+options would not join.
    return source, [r.stem_id for r in records]


def _drop_contaminated(cfg: DictConfig, records: list[TrainingRecord],
                       origin: str) -> tuple[dict[str, Any], list[TrainingRecord]]:
    settings = OverlapSettings(n=cfg.contamination.ngram, min_shared=cfg.contamination.min_shared_ngrams)
    result = check_contamination(records, OmegaConf.to_container(cfg.benchmark, resolve=True), settings,
                                 cache_dir=str(Path(cfg.paths.cache) / "datasets"))
    dropped = overlapping_train_ids(_overlaps(result))
    if "overlaps" in result:
        result["dropped"] = sorted(dropped)
    else:
        log.warning("contamination not checked: %s", result.get("not_checked"))
    if dropped:
        log.warning("dropping %d training records that overlap benchmark %s", len(dropped), cfg.benchmark.name)
    kept = [r for r in records if r.id not in dropped]
    if not kept:
        raise ValueError(f"{origin}: every training record overlaps benchmark {cfg.benchmark.name}; "
                         "nothing left to train on")
    return result, kept


def _overlaps(result: dict[str, Any]):
    from fgrft.data import Overlap

    return [Overlap(**o) for o in result.get("overlaps", [])]


def _load_tokenizer(location: str, label: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as e:
        from fgrft.models import ModelSpecError

        raise ModelSpecError(f"model {label!r}: cannot load a tokenizer from {location}: "
                             f"{str(e).splitlines()[0]}") from None
    if not tokenizer.chat_template:
        raise ConfigError(f"model {label!r} ({location}) has no chat template; evaluation sends chat "
                          "prompts, so training needs one too")
    return tokenizer


def _training_template(tokenizer: Any, model: DictConfig) -> str:
    """The tokenizer's own training twin; the configured family when its template is unknown."""
    from fgrft.models import training_chat_template

    try:
        return training_chat_template(tokenizer)
    except ValueError:
        log.warning("model %s: unknown stock chat template; using the %s training template (checked "
                    "against the stock one on every example)", model.name, model.template_family)
        return training_chat_template(model.template_family)


# --- 2. the trainer ---------------------------------------------------------------------

def _trainer(cfg: DictConfig, prepared: Prepared, run_dir: Path, **sft_overrides: Any):
    from datasets import Dataset

    from .trainer import Fidelity, build_trainer, sft_config

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    args = sft_config(trainer_cfg, output_dir=run_dir / CHECKPOINTS_DIR, batching=prepared.batching,
                      **sft_overrides)
    dataset = Dataset.from_dict(prepared.tokenized.columns())
    return build_trainer(prepared.model_location, prepared.tokenizer, dataset, args, lora=trainer_cfg["lora"],
                         fidelity=Fidelity.from_trainer(trainer_cfg))


def _final_weights(trainer: Any) -> tuple[Any, Any]:
    """(model, consolidated state dict or None). ZeRO-3 ranks hold shards, so the weights are
    gathered (onto rank 0) by a call every rank makes; otherwise the model holds them itself."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        return trainer.accelerator.unwrap_model(trainer.model), state_dict
    return _inference_model(trainer), None


def _inference_model(trainer: Any) -> Any:
    """The trained model as a plain transformers model (LoRA adapters merged in)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def _base_dtype(location: str) -> Any:
    """Save in the base checkpoint's dtype (bf16 here): vLLM then loads it without casting."""
    from transformers import AutoConfig

    try:
        dtype = AutoConfig.from_pretrained(location).dtype
    except (OSError, ValueError):
        return None
    return dtype if dtype is not None and not isinstance(dtype, str) else None


# --- 3. summary -------------------------------------------------------------------------

def _summary(trainer: Any, prepared: Prepared, resumed_from: Path | None, *, wall_s: float) -> dict[str, Any]:
    stats = trainer.batch_stats
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "schema_version": 1,
        "steps": trainer.state.global_step,
        "tokens": stats.real_tokens,
        "trained_tokens": stats.trained_tokens,
        "samples_seen": stats.samples,
        "padding_fraction": round(stats.padding_fraction, 6),
        "tokens_per_s": round(stats.tokens_per_s, 2),
        "final_loss": losses[-1] if losses else None,
        "wall_s": round(wall_s, 2),
        "train_s": round(stats.train_s, 2),
        "examples": len(prepared.tokenized.examples),
        "truncated_samples": len(prepared.tokenized.truncated_ids),
        "batching": prepared.batching,
        "base_model": prepared.base_model,
        "data_hash": prepared.data_hash,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "contamination": prepared.contamination,
        **(prepared.ids_matched or {}),
    }


def _finished_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if read_lineage(run_dir / FINAL_DIR) is not None else None
