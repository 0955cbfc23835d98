"""`scale=toy`: shrink any composed config to an offline CPU run.

It is a plain value rather than an overlay group so that it beats presets and
sweep parameters whatever the order on the command line. Labels stay (a toy
`baselines` sweep still shows four model names), so what a preset compares is
kept; only what would need a GPU, the network or hours is swapped out.
"""
from __future__ import annotations

from omegaconf import DictConfig, open_dict

from fgrft.config.options import group_options, option_values

TOY_BENCHMARK_LIMIT = 8
TOY_MAX_NEW_TOKENS = 96
TOY_TRAIN_STEPS = 4
# The thesis's 5e-6 for 4 steps moves smol by less than bf16 resolution in most weights:
# the three ablation arms then evaluated byte-identically. A toy run must show its arms apart.
TOY_MIN_LEARNING_RATE = 1e-4
TOY_SOURCE_N = 4
TOY_GENERATION_TOKENS = 384
# The bundled options of the groups that would otherwise read thesis files or the hub.
TOY_BENCHMARK = "sample"
TOY_SOURCE = "sample"


def apply_scale(cfg: DictConfig) -> DictConfig:
    """Apply `cfg.scale` in place and return `cfg` (a no-op at full scale)."""
    if cfg.get("scale", "full") != "toy":
        return cfg
    with open_dict(cfg):
        if "model" in cfg and not cfg.model.path:
            # Every model becomes the embedded smol model under its own label; an
            # explicit checkpoint path (a model trained at toy scale) is kept.
            cfg.model.builder = "smol"
            cfg.model.template_family = "chatml"
        if "benchmark" in cfg:
            _toy_benchmark(cfg)
        if "temperature" in cfg:
            cfg.temperature.max_new_tokens = min(cfg.temperature.max_new_tokens, TOY_MAX_NEW_TOKENS)
        if "inference" in cfg and cfg.inference.backend == "vllm":
            cfg.inference.tensor_parallel_size = 1
            cfg.inference.data_parallel_size = 1
            cfg.inference.max_model_len = min(cfg.inference.max_model_len, 2048)
        if "data" in cfg:
            _toy_data(cfg)
        if "trainer" in cfg:
            _toy_trainer(cfg)
        for role in ("generator", "verifier"):
            if role in cfg:
                _toy_endpoint(cfg[role])
        if "source" in cfg:
            _toy_source(cfg)
    return cfg


def _toy_benchmark(cfg: DictConfig) -> None:
    b = cfg.benchmark
    if b.name != TOY_BENCHMARK and b.name in group_options("benchmark") and not b.path:
        _take_option(b, "benchmark", TOY_BENCHMARK, keep=("limit",))
    b.limit = min(b.limit or TOY_BENCHMARK_LIMIT, TOY_BENCHMARK_LIMIT)


def _toy_data(cfg: DictConfig) -> None:
    d = cfg.data
    if d.path:
        return
    # The bundled records of the same format; the target format (what an
    # ablation arm varies) is kept.
    options = {name: option_values("data", name) for name in group_options("data")}
    bundled = [name for name, values in options.items() if values.get("bundled") and values.get("format") == d.format]
    if not bundled:
        raise ValueError(f"scale=toy: no data option under conf/data/ bundles records of format {d.format!r}")
    _take_option(d, "data", bundled[0], keep=("target_format", "seed"))


def _toy_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    t.max_steps = min(t.max_steps, TOY_TRAIN_STEPS) if t.max_steps > 0 else TOY_TRAIN_STEPS
    t.save_steps = min(t.save_steps, TOY_TRAIN_STEPS)
    t.learning_rate = max(t.learning_rate, TOY_MIN_LEARNING_RATE)
    t.max_seq_len = min(t.max_seq_len, 1024)
    t.grad_accum = 1
    t.global_batch_size = None
    t.micro_batch_size = min(t.micro_batch_size, 2)
    t.gradient_checkpointing = False
    t.attn_implementation = "sdpa"
    t.num_machines, t.machine_rank, t.main_process_ip = 1, 0, None
    # A CPU-sized ZeRO-3 trainer (cpu_zero3) keeps its sharded path: proving it is its point.
    if not (t.distributed == "zero3" and t.num_processes <= 2):
        # GPU-sized trainers become one in-process CPU run: ZeRO-3 over 2 CPU ranks costs
        # ~2.5 min per job here (rank start-up, gloo collectives), too slow for a 3-arm toy sweep.
        t.distributed = "ddp"
        t.num_processes = 1
        t.precision = "fp32"
    t.lora = None


def _toy_endpoint(endpoint: DictConfig) -> None:
    endpoint.kind, endpoint.model, endpoint.base_url, endpoint.api_key_env = "embedded", "smol", None, None
    endpoint.rpm, endpoint.tpm = None, None
    endpoint.max_output_tokens = min(endpoint.max_output_tokens, TOY_GENERATION_TOKENS)
    endpoint.fallback = None
    for params in endpoint.steps.values():
        # Reasoning-model profiles leave temperature unset; the embedded model needs one.
        params.setdefault("temperature", 0.5)
        if "max_tokens" in params:
            params.max_tokens = min(params.max_tokens, TOY_GENERATION_TOKENS)


def _toy_source(cfg: DictConfig) -> None:
    s = cfg.source
    if not s.path:
        _take_option(s, "source", TOY_SOURCE, keep=("limit", "seed", "n"))
    s.n = min(s.n, TOY_SOURCE_N) if s.n else None
    s.limit = min(s.limit or TOY_SOURCE_N, TOY_SOURCE_N)


def _take_option(node: DictConfig, group: str, name: str, keep: tuple[str, ...]) -> None:
    """Switch ``node`` to option ``name`` of ``group``: its file's values, except the ``keep`` keys."""
    for key, value in option_values(group, name).items():
        if key not in keep:
            node[key] = value
