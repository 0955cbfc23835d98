"""Every option of every group, and every preset with its entrypoints, composes and validates."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fgrft.config import CONF_DIR, ConfigError, register_resolvers, validate
from fgrft.config.scale import apply_scale
from fgrft.config.schema import SCHEMAS

register_resolvers()
ENTRYPOINTS = ["generate", "train", "evaluate", "report"]
REPO = Path(__file__).resolve().parent.parent


def _groups_of(entrypoint: str) -> list[str]:
    defaults = OmegaConf.load(CONF_DIR / f"{entrypoint}.yaml").defaults
    return [next(iter(d)) for d in defaults if isinstance(d, dict) or OmegaConf.is_dict(d)]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(entrypoint: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=entrypoint, overrides=overrides)


def _preset_entrypoints(name: str) -> list[str]:
    header = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    m = re.search(r"^# Entrypoints:(.*)$", header, re.M)
    assert m, f"preset {name} does not name its entrypoints"
    return re.findall(r"fgrft\.(\w+)", m.group(1))


GROUP_CASES = [(e, g, o) for e in ENTRYPOINTS for g in _groups_of(e) if g != "paths" for o in _options(g)]
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
PRESET_CASES = [(p, e) for p in PRESETS for e in _preset_entrypoints(p)]


def test_every_contract_option_exists():
    expected = {
        "model": {"smol", "tiny", "llama31_8b_instruct", "med42_8b", "qwen25_7b_instruct", "biomistral_7b"},
        "benchmark": {"medqa", "pubmedqa", "medmcqa", "all", "sample"},
        "source": {"sample", "medqa_train"},
        "data": {"sample", "sample_naive", "fgrft_5k", "naive_cot_5k", "naive_cot_5k_structured"},
        "generator": {"embedded", "vllm_local", "gpt4o", "gpt5"},
        "verifier": {"embedded", "vllm_local", "gpt4o", "gpt5"},
        "inference": {"vllm", "openai", "hf", "replay"},
        "temperature": {"t0.5", "t0.7", "greedy"},
        "scorer": {"strict", "thesis"},
        "prompt": {"thesis", "strict"},
        "trainer": {"cpu", "cpu_zero3", "single_gpu", "zero3_8gpu"},
        "experiment": {"fgrft_data", "fgrft", "ablation_naive", "base", "temperature_sweep", "baselines",
                       "recipe_ablation"},
    }
    for group, options in expected.items():
        assert set(_options(group)) == options, group


@pytest.mark.parametrize("entrypoint,group,option", GROUP_CASES)
@pytest.mark.parametrize("scale", ["full", "toy"])
def test_every_option_composes(entrypoint, group, option, scale):
    overrides = [f"{group}={option}", f"scale={scale}"]
    if group == "inference" and option == "replay":
        overrides.append("inference.path=/tmp/predictions.jsonl")
    cfg = apply_scale(validate(_compose(entrypoint, overrides), entrypoint))
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert Path(cfg.paths.root).is_absolute() and cfg.paths.outputs.startswith(cfg.paths.root)


@pytest.mark.parametrize("preset,entrypoint", PRESET_CASES)
@pytest.mark.parametrize("scale", ["full", "toy"])
def test_every_preset_composes_with_its_entrypoints(preset, entrypoint, scale):
    cfg = _compose(entrypoint, [f"+experiment={preset}", f"scale={scale}"])
    assert cfg.experiment_name == preset
    cfg = apply_scale(validate(cfg, entrypoint))
    if scale == "toy":
        if "model" in cfg:
            assert cfg.model.builder == "smol"
        if "benchmark" in cfg:
            assert cfg.benchmark.name == "sample" and cfg.benchmark.limit <= 8
        if "trainer" in cfg:
            assert cfg.trainer.max_steps <= 4 and cfg.trainer.num_processes <= 2
        if "generator" in cfg:
            assert cfg.generator.kind == cfg.verifier.kind == "embedded" and cfg.source.name == "sample"


def test_every_preset_starts_with_its_command():
    for preset in PRESETS:
        lines = (CONF_DIR / "experiment" / f"{preset}.yaml").read_text().splitlines()
        assert lines[0] == "# @package _global_"
        assert lines[1].startswith("# Entrypoints: python -m fgrft.")
        assert any(f"+experiment={preset}" in line for line in lines[:6]), preset


def test_toy_keeps_labels_and_what_a_preset_compares():
    cfg = apply_scale(validate(_compose("evaluate", ["+experiment=baselines", "model=med42_8b", "scale=toy"]),
                               "evaluate"))
    assert cfg.model.name == "med42_8b" and cfg.model.builder == "smol"
    cfg = apply_scale(validate(_compose("train", ["+experiment=ablation_naive", "data=naive_cot_5k_structured",
                                                  "scale=toy"]), "train"))
    assert (cfg.data.name, cfg.data.format, cfg.data.target_format) == ("sample_naive", "naive_cot", "thinking")
    # few steps at the thesis's 5e-6 would leave the arms indistinguishable; a larger rate is kept
    assert cfg.trainer.max_steps == 4 and cfg.trainer.learning_rate == 1e-4
    cfg = apply_scale(validate(_compose("train", ["trainer.learning_rate=3e-3", "scale=toy"]), "train"))
    assert cfg.trainer.learning_rate == 3e-3


def test_toy_keeps_an_explicit_checkpoint_path():
    cfg = apply_scale(validate(_compose("evaluate", ["model.path=/ckpt", "scale=toy"]), "evaluate"))
    assert cfg.model.path == "/ckpt" and cfg.model.builder == "smol"  # path wins at resolution


def test_misspelt_key_is_rejected_naming_it():
    with pytest.raises(ConfigError, match=r"model\.pth"):
        validate(_compose("evaluate", ["+model.pth=/x"]), "evaluate")


def test_wrong_type_is_rejected_naming_it():
    with pytest.raises(ConfigError, match=r"trainer\.max_steps"):
        validate(_compose("train", ["trainer.max_steps=many"]), "train")


def test_value_outside_a_switch_is_rejected_naming_it():
    with pytest.raises(ConfigError, match=r"data\.target_format"):
        validate(_compose("train", ["data.target_format=thinkng"]), "train")


def test_schemas_cover_every_entrypoint():
    assert set(SCHEMAS) == set(ENTRYPOINTS)


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_entrypoints_help_and_print_config_from_an_empty_directory(entrypoint, tmp_path):
    help_ = _run([f"fgrft.{entrypoint}", "--help"], tmp_path)
    assert help_.returncode == 0, help_.stderr
    assert "== Configuration groups ==" in help_.stdout
    shown = _run([f"fgrft.{entrypoint}", "--cfg", "job", "--resolve"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    cfg = OmegaConf.create(shown.stdout)
    assert cfg.paths.root == str(tmp_path) and cfg.paths.cache == str(tmp_path / ".cache/fgrft")
    assert not any(tmp_path.iterdir()), "printing the config must not write anything"


def test_an_unknown_override_fails_before_any_work(tmp_path):
    r = _run(["fgrft.evaluate", "model.pth=/x"], tmp_path)
    assert r.returncode != 0 and "pth" in r.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_wheel_layout_finds_conf_prompts_and_claims_inside_the_package(tmp_path):
    import shutil

    # what pyproject's force-include puts in a wheel: conf/ etc. inside the package
    site = tmp_path / "site"
    shutil.copytree(REPO / "fgrft", site / "fgrft", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "conf", site / "fgrft" / "_conf")
    shutil.copytree(REPO / "prompts", site / "fgrft" / "_prompts")
    (site / "fgrft" / "_experiments").mkdir()
    shutil.copy(REPO / "experiments" / "claims.yaml", site / "fgrft" / "_experiments")
    code = "from fgrft.config.locations import *; print(CONF_DIR, PROMPTS_DIR, EXPERIMENTS_DIR)"
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(site / "fgrft" / d) for d in ("_conf", "_prompts", "_experiments")]


def test_the_composed_config_shows_which_recipe_and_fidelity_settings_are_in_force():
    thesis = {"decay_exclude": ["bias", "LayerNorm.weight"], "truncation_side": "left",
              "warmup_rounding": "floor", "loss_normalization": "micro_batch_mean"}
    conventional = {"decay_exclude": "auto", "truncation_side": "right", "warmup_rounding": "ceil",
                    "loss_normalization": "token_mean"}

    def fidelity(overrides):
        cfg = apply_scale(validate(_compose("train", overrides), "train"))
        return {k: OmegaConf.to_container(cfg.trainer, resolve=True)[k] for k in thesis}

    for preset in ("fgrft", "ablation_naive", "recipe_ablation"):
        assert fidelity([f"+experiment={preset}"]) == thesis
        assert fidelity([f"+experiment={preset}", "scale=toy"]) == thesis  # toy keeps what it compares
    for trainer in _options("trainer"):
        assert fidelity([f"trainer={trainer}"]) == conventional
    gen = validate(_compose("generate", []), "generate")
    assert gen.recipe == "thesis" and gen.contamination.mode == "check"
    assert gen.generator.structured == gen.verifier.structured == "json_schema"
    with pytest.raises(ConfigError, match="recipe"):
        validate(_compose("generate", ["recipe=plus"]), "generate")


def test_one_config_error_for_the_schema_and_the_api_engine():
    import fgrft.config
    import fgrft.errors
    import fgrft.llm
    from fgrft.llm import EndpointSettings, profile_for
    from fgrft.llm.profiles import build_request
    from fgrft.llm.config import Sampling

    assert fgrft.config.ConfigError is fgrft.llm.ConfigError is fgrft.errors.ConfigError
    # An engine-side settings error is caught by the handler written for schema errors.
    ep = EndpointSettings(base_url="http://127.0.0.1:1/v1", model="gpt-4o", kind="openai")
    with pytest.raises(fgrft.config.ConfigError, match="vLLM sampling parameter"):
        build_request(profile_for(ep), ep.model, [], Sampling(top_k=5))
