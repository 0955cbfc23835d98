"""Structured schemas for every config group and entrypoint.

Hydra already rejects a command-line override of an unknown key; these schemas
also catch misspelt keys and wrong types in YAML files (presets, user configs)
right after composition and before any work starts. They hold no defaults:
every value comes from the YAML under conf/, and a key it does not set is an
error naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from fgrft.config.options import group_options, group_values


# Every value comes from the composed YAML under conf/: a key without one is an error (MISSING),
# never filled in here. A None default marks a key that some options of a union group leave out
# (an inference backend's settings under another backend; "not used by this option").


@dataclass
class PathsConfig:
    root: str = MISSING
    outputs: str = MISSING
    cache: str = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    hub_id: Optional[str] = MISSING
    path: Optional[str] = MISSING
    builder: Optional[str] = MISSING  # smol | tiny
    template_family: str = MISSING  # chatml | llama3 | mistral


@dataclass
class BenchmarkConfig:
    name: str = MISSING  # an option under conf/benchmark/
    dir: Optional[str] = MISSING
    path: Optional[str] = MISSING
    file_key: Optional[str] = MISSING
    hub_id: Optional[str] = MISSING
    hub_config: Optional[str] = MISSING
    split: Optional[str] = MISSING
    limit: Optional[int] = MISSING


@dataclass
class SourceConfig:
    name: str = MISSING  # an option under conf/source/
    path: Optional[str] = MISSING
    file_key: Optional[str] = MISSING
    hub_id: Optional[str] = MISSING
    split: Optional[str] = MISSING
    limit: Optional[int] = MISSING
    seed: int = MISSING
    n: Optional[int] = MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    path: Optional[str] = MISSING
    bundled: Optional[str] = MISSING  # a file shipped in fgrft/data/bundled/
    hub_id: Optional[str] = MISSING
    split: Optional[str] = MISSING
    n: Optional[int] = MISSING
    seed: int = MISSING
    format: str = MISSING  # fgrft | naive_cot
    target_format: str = MISSING  # thinking | raw
    source: str = MISSING  # the source name of records that carry none


@dataclass
class TemperatureConfig:
    name: str = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    max_new_tokens: int = MISSING
    seed: int = MISSING
    n_samples: int = MISSING


@dataclass
class InferenceConfig:
    backend: str = MISSING  # an inference option's backend: vllm | hf | openai | replay
    path: Optional[str] = MISSING  # replay: the predictions file
    # vllm / hf
    tensor_parallel_size: Optional[int] = None
    data_parallel_size: Optional[int] = None
    gpu_memory_utilization: Optional[float] = None
    max_model_len: Optional[int] = None
    enforce_eager: Optional[bool] = None
    dtype: Optional[str] = None
    batch_size: Optional[int] = None
    # openai-compatible servers
    kind: Optional[str] = None
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: Optional[str] = None
    concurrency: Optional[int] = None
    rpm: Optional[int] = None
    tpm: Optional[int] = None
    timeout_s: Optional[float] = None
    mode: Optional[str] = None  # sync | batch (provider Batch API)
    batch_poll_s: Optional[float] = None
    batch_max_tries: Optional[int] = None
    max_enqueued_tokens: Optional[int] = None


@dataclass
class ScorerConfig:
    name: str = MISSING  # an option under conf/scorer/


@dataclass
class PromptConfig:
    name: str = MISSING  # an option under conf/prompt/
    template: str = MISSING  # file under prompts/


@dataclass
class FallbackConfig:
    """A fallback block a user writes on the command line; the presets spell out all three keys."""

    model: str = MISSING
    temperature: Optional[float] = None
    after_failures: int = 3


@dataclass
class EndpointConfig:
    """An OpenAI-compatible endpoint playing a Stage 1 role (generator or verifier)."""

    kind: str = MISSING  # embedded | vllm | openai
    base_url: Optional[str] = MISSING
    model: str = MISSING
    api_key_env: Optional[str] = MISSING
    concurrency: int = MISSING
    rpm: Optional[int] = MISSING
    tpm: Optional[int] = MISSING
    timeout_s: float = MISSING
    max_output_tokens: int = MISSING
    # How a step's JSON schema is sent: json_schema (constrained decoding) | json_object (JSON
    # mode, as the thesis; the schema is checked on return).
    structured: str = MISSING
    mode: str = MISSING  # sync | batch (provider Batch API)
    batch_poll_s: float = MISSING
    batch_max_tries: int = MISSING
    max_enqueued_tokens: Optional[int] = MISSING
    # step name -> sampling parameters (temperature, top_p, ...)
    steps: Dict[str, Dict[str, Any]] = MISSING
    fallback: Optional[FallbackConfig] = MISSING


@dataclass
class LoraConfig:
    """A LoRA block a user writes on the command line (`trainer.lora={r:16}`): no preset has one."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"


@dataclass
class TrainerConfig:
    name: str = MISSING
    seed: int = MISSING
    num_processes: int = MISSING
    num_machines: int = MISSING
    machine_rank: int = MISSING
    main_process_ip: Optional[str] = MISSING
    main_process_port: int = MISSING
    distributed: str = MISSING  # ddp | zero3
    precision: str = MISSING  # fp32 | bf16
    micro_batch_size: int = MISSING
    grad_accum: int = MISSING
    # The preset's global batch (micro x accumulation x all ranks); null: grad_accum is taken as given.
    global_batch_size: Optional[int] = MISSING
    max_seq_len: int = MISSING
    epochs: float = MISSING
    max_steps: int = MISSING
    learning_rate: float = MISSING
    weight_decay: float = MISSING
    lr_scheduler: str = MISSING
    warmup_ratio: float = MISSING
    max_grad_norm: float = MISSING
    gradient_checkpointing: bool = MISSING
    batching: str = MISSING  # packed | grouped | padded
    attn_implementation: str = MISSING
    save_steps: int = MISSING
    max_ckpts: int = MISSING
    logging_steps: int = MISSING
    lora: Optional[LoraConfig] = MISSING
    # Fidelity keys (fgrft/training/trainer.py): the thesis presets set the thesis's values.
    decay_exclude: Any = MISSING  # auto | list of parameter-name substrings
    truncation_side: str = MISSING  # right | left
    warmup_rounding: str = MISSING  # ceil | floor
    loss_normalization: str = MISSING  # token_mean | micro_batch_mean


@dataclass
class ContaminationConfig:
    ngram: int = MISSING
    min_shared_ngrams: int = MISSING


@dataclass
class GenerateContaminationConfig(ContaminationConfig):
    mode: str = MISSING  # check | skip (an explicit, logged opt-out)


@dataclass
class _Common:
    paths: PathsConfig = field(default_factory=PathsConfig)
    scale: str = MISSING  # full | toy
    experiment_name: str = MISSING


@dataclass
class GenerateConfig(_Common):
    generator: EndpointConfig = field(default_factory=EndpointConfig)
    verifier: EndpointConfig = field(default_factory=EndpointConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    recipe: str = MISSING  # thesis | fgrft_plus
    max_revisions: int = MISSING
    regate: bool = MISSING
    dry_run: bool = MISSING
    budget_usd: Optional[float] = MISSING
    traces: bool = MISSING
    contamination: GenerateContaminationConfig = field(default_factory=GenerateContaminationConfig)


@dataclass
class _EvaluationGroups:
    model: ModelConfig = field(default_factory=ModelConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


@dataclass
class TrainConfig(_EvaluationGroups, _Common):
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluate_after: bool = MISSING
    # The FGRFT records file (a Stage 1 records.jsonl) whose question ids every ablation arm trains on.
    fgrft_records: Optional[str] = MISSING
    shared_ids_with: Optional[str] = MISSING  # a data option: every ablation arm trains on the shared ids
    min_id_match: float = MISSING
    # Recipe ablation: the Stage 1 recipe whose records this arm trains on, and each recipe's records file.
    recipe: Optional[str] = MISSING
    recipe_records: Optional[Dict[str, Optional[str]]] = MISSING
    min_records: int = MISSING  # fewer (after the shared ids): toy scale adds the bundled records, full scale fails
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig)
    # Multi-node (SLURM): how long the nodes wait for each other in the shared run directory.
    node_wait_s: float = MISSING


@dataclass
class EvaluateConfig(_EvaluationGroups, _Common):
    dry_run: bool = MISSING
    budget_usd: Optional[float] = MISSING
    resume: bool = MISSING  # false: set kept completions aside, start over in a fresh MLflow run


@dataclass
class ReportConfig(_Common):
    sweep_id: Optional[str] = MISSING
    experiments: Optional[List[str]] = MISSING  # MLflow experiments to read (null: experiment_name)
    claims: Optional[str] = MISSING  # claims registry path (null: experiments/claims.yaml)
    bootstrap_resamples: int = MISSING
    bootstrap_seed: int = MISSING


SCHEMAS = {
    "generate": GenerateConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
}

# Allowed values of the string-typed switches that code dispatches on, checked by `validate`.
SWITCHES = {
    "scale": {"full", "toy"},
    "model.builder": {None, "smol", "tiny"},
    "model.template_family": {"chatml", "llama3", "mistral"},
    "data.format": {"fgrft", "naive_cot"},
    "data.target_format": {"thinking", "raw"},
    "inference.kind": {None, "vllm", "openai", "embedded"},
    "generator.kind": {"embedded", "vllm", "openai"},
    "verifier.kind": {"embedded", "vllm", "openai"},
    "recipe": {"thesis", "fgrft_plus"},
    "generator.structured": {"json_schema", "json_object"},
    "verifier.structured": {"json_schema", "json_object"},
    "contamination.mode": {"check", "skip"},
    "generator.mode": {"sync", "batch"},
    "inference.mode": {None, "sync", "batch"},
    "verifier.mode": {"sync", "batch"},
    "trainer.distributed": {"ddp", "zero3"},
    "trainer.precision": {"fp32", "bf16"},
    "trainer.batching": {"packed", "grouped", "padded"},
    "trainer.truncation_side": {"right", "left"},
    "trainer.warmup_rounding": {"ceil", "floor"},
    "trainer.loss_normalization": {"token_mean", "micro_batch_mean"},
}
# Keys whose allowed values are a config group's options (conf/<group>/*.yaml), or the values
# those options give one key: adding an option file adds an allowed value.
GROUP_NAMES = ("benchmark", "source", "scorer", "prompt")
GROUP_KEYS = {"inference.backend": ("inference", "backend")}


def choices() -> dict[str, set]:
    """Every checked key and its allowed values, the group-derived ones read from conf/ now."""
    out = {f"{group}.name": set(group_options(group)) for group in GROUP_NAMES}
    out.update({key: group_values(group, field) for key, (group, field) in GROUP_KEYS.items()})
    return {**SWITCHES, **out}
