"""Structured schemas for every config group and entrypoint.

Hydra already rejects a command-line override of an unknown key; these schemas
also catch misspelt keys and wrong types in YAML files (presets, user configs)
and fill in defaults, right after composition and before any work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class PathsConfig:
    root: str = MISSING
    outputs: str = MISSING
    cache: str = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    hub_id: Optional[str] = None
    path: Optional[str] = None
    builder: Optional[str] = None  # smol | tiny
    template_family: str = "chatml"  # chatml | llama3 | mistral


@dataclass
class BenchmarkConfig:
    name: str = MISSING  # medqa | pubmedqa | medmcqa | all | sample
    dir: Optional[str] = None
    path: Optional[str] = None
    file_key: Optional[str] = None
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    split: Optional[str] = None
    limit: Optional[int] = None


@dataclass
class SourceConfig:
    name: str = MISSING  # sample | medqa_train
    path: Optional[str] = None
    file_key: Optional[str] = None
    hub_id: Optional[str] = None
    split: Optional[str] = None
    limit: Optional[int] = None
    seed: int = 42
    n: Optional[int] = None


@dataclass
class DataConfig:
    name: str = MISSING
    path: Optional[str] = None
    hub_id: Optional[str] = None
    split: Optional[str] = None
    n: Optional[int] = None
    seed: int = 42
    format: str = "fgrft"  # fgrft | naive_cot
    target_format: str = "thinking"  # thinking | raw


@dataclass
class TemperatureConfig:
    name: str = MISSING
    temperature: float = 0.5
    top_p: float = 0.9
    max_new_tokens: int = 2000
    seed: int = 42
    n_samples: int = 1


@dataclass
class InferenceConfig:
    backend: str = MISSING  # vllm | hf | openai | replay
    path: Optional[str] = None  # replay: the predictions file
    # vllm / hf
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: Optional[float] = None
    max_model_len: int = 4096
    enforce_eager: Optional[bool] = None
    dtype: str = "auto"
    batch_size: Optional[int] = None
    # openai-compatible servers
    kind: str = "vllm"
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: Optional[str] = None
    concurrency: int = 64
    rpm: Optional[int] = None
    tpm: Optional[int] = None
    timeout_s: float = 600.0
    mode: str = "sync"  # sync | batch (provider Batch API)
    batch_poll_s: float = 60.0
    batch_max_tries: int = 3
    max_enqueued_tokens: Optional[int] = None


@dataclass
class ScorerConfig:
    name: str = MISSING  # strict | thesis


@dataclass
class PromptConfig:
    name: str = MISSING  # thesis | strict
    template: str = MISSING  # file under prompts/


@dataclass
class FallbackConfig:
    model: str = MISSING
    temperature: Optional[float] = None
    after_failures: int = 3


@dataclass
class EndpointConfig:
    """An OpenAI-compatible endpoint playing a Stage 1 role (generator or verifier)."""

    kind: str = MISSING  # embedded | vllm | openai
    base_url: Optional[str] = None
    model: str = MISSING
    api_key_env: Optional[str] = None
    concurrency: int = 16
    rpm: Optional[int] = None
    tpm: Optional[int] = None
    timeout_s: float = 300.0
    max_output_tokens: int = 2048
    # How a step's JSON schema is sent: json_schema (constrained decoding) | json_object (JSON
    # mode, as the thesis; the schema is checked on return).
    structured: str = "json_schema"
    mode: str = "sync"  # sync | batch (provider Batch API)
    batch_poll_s: float = 60.0
    batch_max_tries: int = 3
    max_enqueued_tokens: Optional[int] = None
    # step name -> sampling parameters (temperature, top_p, ...)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    fallback: Optional[FallbackConfig] = None


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"


@dataclass
class TrainerConfig:
    name: str = MISSING
    seed: int = 42
    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: Optional[str] = None
    main_process_port: int = 29500
    distributed: str = "ddp"  # ddp | zero3
    precision: str = "fp32"  # fp32 | bf16
    micro_batch_size: int = 2
    grad_accum: int = 1
    # The preset's global batch (micro x accumulation x all ranks); null: grad_accum is taken as given.
    global_batch_size: Optional[int] = None
    max_seq_len: int = 1024
    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 5e-6
    weight_decay: float = 0.1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    batching: str = "packed"  # packed | grouped | padded
    attn_implementation: str = "sdpa"
    save_steps: int = 50
    max_ckpts: int = 2
    logging_steps: int = 1
    lora: Optional[LoraConfig] = None
    # Fidelity keys (fgrft/training/trainer.py): the thesis presets set the thesis's values.
    decay_exclude: Any = "auto"  # auto | list of parameter-name substrings
    truncation_side: str = "right"  # right | left
    warmup_rounding: str = "ceil"  # ceil | floor
    loss_normalization: str = "token_mean"  # token_mean | micro_batch_mean


@dataclass
class ContaminationConfig:
    ngram: int = 13
    min_shared_ngrams: int = 1
    mode: str = "check"  # check | skip (generate: an explicit, logged opt-out)


@dataclass
class _Common:
    paths: PathsConfig = field(default_factory=PathsConfig)
    scale: str = "full"  # full | toy
    experiment_name: str = "default"


@dataclass
class GenerateConfig(_Common):
    generator: EndpointConfig = field(default_factory=EndpointConfig)
    verifier: EndpointConfig = field(default_factory=EndpointConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    recipe: str = "thesis"  # thesis | fgrft_plus
    max_revisions: int = 1
    regate: bool = False
    dry_run: bool = False
    budget_usd: Optional[float] = None
    traces: bool = True
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig)


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
    evaluate_after: bool = False
    # The FGRFT records file (a Stage 1 records.jsonl) whose question ids every ablation arm trains on.
    fgrft_records: Optional[str] = None
    shared_ids_with: Optional[str] = None  # a data option: every ablation arm trains on the shared ids
    min_id_match: float = 0.99
    # Recipe ablation: the Stage 1 recipe whose records this arm trains on, and each recipe's records file.
    recipe: Optional[str] = None
    recipe_records: Optional[Dict[str, Optional[str]]] = None
    min_records: int = 0  # fewer (after the shared ids): toy scale adds the bundled records, full scale fails
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig)
    # Multi-node (SLURM): how long the nodes wait for each other in the shared run directory.
    node_wait_s: float = 900.0


@dataclass
class EvaluateConfig(_EvaluationGroups, _Common):
    dry_run: bool = False
    budget_usd: Optional[float] = None
    resume: bool = True  # false: set kept completions aside, start over in a fresh MLflow run


@dataclass
class ReportConfig(_Common):
    sweep_id: Optional[str] = None
    experiments: Optional[List[str]] = None  # MLflow experiments to read (null: experiment_name)
    claims: Optional[str] = None  # claims registry path (null: experiments/claims.yaml)
    bootstrap_resamples: int = 10000
    bootstrap_seed: int = 0


SCHEMAS = {
    "generate": GenerateConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
}

# Allowed values of the string-typed switches, checked by `validate`.
CHOICES = {
    "scale": {"full", "toy"},
    "model.builder": {None, "smol", "tiny"},
    "model.template_family": {"chatml", "llama3", "mistral"},
    "benchmark.name": {"medqa", "pubmedqa", "medmcqa", "all", "sample"},
    "source.name": {"sample", "medqa_train"},
    "data.format": {"fgrft", "naive_cot"},
    "data.target_format": {"thinking", "raw"},
    "inference.backend": {"vllm", "hf", "openai", "replay"},
    "inference.kind": {"vllm", "openai", "embedded"},
    "scorer.name": {"strict", "thesis"},
    "prompt.name": {"thesis", "strict"},
    "generator.kind": {"embedded", "vllm", "openai"},
    "verifier.kind": {"embedded", "vllm", "openai"},
    "recipe": {"thesis", "fgrft_plus"},
    "generator.structured": {"json_schema", "json_object"},
    "verifier.structured": {"json_schema", "json_object"},
    "contamination.mode": {"check", "skip"},
    "generator.mode": {"sync", "batch"},
    "inference.mode": {"sync", "batch"},
    "verifier.mode": {"sync", "batch"},
    "trainer.distributed": {"ddp", "zero3"},
    "trainer.precision": {"fp32", "bf16"},
    "trainer.batching": {"packed", "grouped", "padded"},
    "trainer.truncation_side": {"right", "left"},
    "trainer.warmup_rounding": {"ceil", "floor"},
    "trainer.loss_normalization": {"token_mean", "micro_batch_mean"},
}
