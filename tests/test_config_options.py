"""Defaults live in conf/ only: option lists are the YAML files on disk, the schema holds no values,
and a new benchmark or data option is one YAML file (plus a row converter for a new hub shape)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import MISSING, OmegaConf

from fgrft.config import CONF_DIR, ConfigError, locations, register_resolvers, validate
from fgrft.config.options import group_options, group_values, option_values
from fgrft.config.scale import apply_scale
from fgrft.config.schema import (SCHEMAS, FallbackConfig, InferenceConfig, LoraConfig, SWITCHES,
                                 choices)
from fgrft.data import benchmark_names, data_names, hub, load_benchmark, load_training_records, source_names
from fgrft.reporting.eval_runs import ARMS_BY_FORMAT, data_arm

register_resolvers()
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
# Groups whose options state their own name: the file stem and the `name` key must agree.
NAMED_GROUPS = ["benchmark", "data", "model", "prompt", "scorer", "source", "temperature", "trainer"]
# Blocks no preset holds a value for, written by a user on the command line (trainer.lora={r:16},
# verifier.fallback={model:...}): their dataclass defaults are the only copy of those values.
USER_BLOCKS = {LoraConfig, FallbackConfig}
# Union groups: a None default marks a key the options of another kind leave out.
UNION_GROUPS = {InferenceConfig: "inference"}


def _compose(conf_dir: Path, entrypoint: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name=entrypoint, overrides=overrides)


def _stems(group: str, conf_dir: Path = CONF_DIR) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (conf_dir / group).glob("*.yaml")))


@pytest.mark.parametrize("group", GROUPS)
def test_a_groups_options_are_its_yaml_files(group):
    assert group_options(group) == _stems(group) and group_options(group)
    if group in NAMED_GROUPS:
        for name in group_options(group):
            assert option_values(group, name)["name"] == name, f"conf/{group}/{name}.yaml"


def test_every_option_list_in_code_is_the_one_on_disk():
    assert benchmark_names() == ("all", "medmcqa", "medqa", "pubmedqa", "sample")
    assert benchmark_names() == _stems("benchmark")
    assert source_names() == _stems("source")
    assert data_names() == _stems("data")
    allowed = choices()
    for group in ("benchmark", "source", "scorer", "prompt"):
        assert allowed[f"{group}.name"] == set(_stems(group)), group
    backends = {yaml.safe_load((CONF_DIR / "inference" / f"{n}.yaml").read_text())["backend"]
                for n in _stems("inference")}
    assert allowed["inference.backend"] == backends == group_values("inference", "backend")
    assert not set(SWITCHES) & {f"{g}.name" for g in GROUPS}, "a group's option list is kept in code"


@pytest.mark.parametrize("name", _stems("data"))
def test_a_data_label_names_the_arm_of_its_options_formats(name):
    values = yaml.safe_load((CONF_DIR / "data" / f"{name}.yaml").read_text())
    arm = ARMS_BY_FORMAT[(values["format"], values["target_format"])]
    assert data_arm({"data_label": name}) == arm
    assert data_arm({"data_label": "no_such_option"}) == "data:no_such_option"


def _schema_fields(cls, seen=None):
    seen = set() if seen is None else seen
    for f in dataclasses.fields(cls):
        yield cls, f
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory) \
                and f.default_factory not in seen:
            seen.add(f.default_factory)
            yield from _schema_fields(f.default_factory, seen)


def test_the_schema_holds_no_values():
    """Every schema key is MISSING (conf/ must set it); None only where some option of a union
    group leaves the key out; nested groups only as their own (value-free) schemas."""
    offending = []
    for schema in SCHEMAS.values():
        for cls, f in _schema_fields(schema):
            if cls in USER_BLOCKS or f.default is MISSING:
                continue
            if f.default_factory is not dataclasses.MISSING:
                if not dataclasses.is_dataclass(f.default_factory):
                    offending.append(f"{cls.__name__}.{f.name} = {f.default_factory!r}()")
                continue
            group = UNION_GROUPS.get(cls)
            if f.default is None and group and any(f.name not in option_values(group, n)
                                                   for n in group_options(group)):
                continue
            offending.append(f"{cls.__name__}.{f.name} = {f.default!r}")
    assert offending == []


def test_a_key_the_composed_config_leaves_out_is_named():
    with pytest.raises(ConfigError, match=r"'temperature\.top_p'"):
        validate(_compose(CONF_DIR, "evaluate", ["~temperature.top_p"]), "evaluate")
    with pytest.raises(ConfigError, match=r"'trainer\.max_steps'"):
        validate(_compose(CONF_DIR, "train", ["~trainer.max_steps"]), "train")


def _fake_hub(monkeypatch, rows):
    calls = []

    def fake(hub_id, config=None, split=None, cache_dir=None):
        calls.append((hub_id, config, split))
        return rows

    monkeypatch.setattr(hub, "load_dataset", fake)
    return calls


NEW_BENCHMARK = {"name": "mini_bench", "dir": None, "path": None, "file_key": "MiniBench_test",
                 "hub_id": "example/mini-bench", "hub_config": None, "split": "test", "limit": None}
MINI_ROW = {"question": "Which vitamin deficiency causes scurvy?",
            "options": {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K"},
            "answer_idx": "B", "answer": "Vitamin C"}


@pytest.fixture
def conf_copy(tmp_path, monkeypatch):
    """A copy of conf/ that the package reads instead of its own."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    monkeypatch.setattr(locations, "CONF_DIR", conf)
    return conf


def test_a_new_benchmark_is_one_yaml_file(conf_copy, monkeypatch):
    with pytest.raises(ConfigError, match="'benchmark.name'.*not one of"):
        validate(_compose(conf_copy, "evaluate", ["benchmark.name=mini_bench"]), "evaluate")
    with pytest.raises(ValueError, match="unknown benchmark 'mini_bench'"):
        load_benchmark({"name": "mini_bench"})

    (conf_copy / "benchmark" / "mini_bench.yaml").write_text(yaml.safe_dump(NEW_BENCHMARK, sort_keys=False))
    calls = _fake_hub(monkeypatch, [MINI_ROW])
    assert "mini_bench" in benchmark_names()
    cfg = validate(_compose(conf_copy, "evaluate", ["benchmark=mini_bench"]), "evaluate")
    loaded = load_benchmark(OmegaConf.to_container(cfg.benchmark, resolve=True))
    (q,) = loaded["MiniBench_test"]
    assert q.answer_idx == "B" and calls == [("example/mini-bench", None, "test")]
    # A library call by name alone takes the option file's keys.
    assert list(load_benchmark({"name": "mini_bench"})) == ["MiniBench_test"]
    # scale=toy swaps it for the bundled sample, like the thesis benchmarks.
    toy = apply_scale(validate(_compose(conf_copy, "evaluate", ["benchmark=mini_bench", "scale=toy"]), "evaluate"))
    assert toy.benchmark.name == "sample" and toy.benchmark.hub_id is None and toy.benchmark.file_key is None


def test_a_new_data_option_is_one_yaml_file(conf_copy):
    values = {**option_values("data", "sample_naive"), "name": "mini_structured", "target_format": "thinking"}
    with pytest.raises(ValueError, match="unknown data option 'mini_structured'"):
        load_training_records({"name": "mini_structured"})
    (conf_copy / "data" / "mini_structured.yaml").write_text(yaml.safe_dump(values, sort_keys=False))

    cfg = validate(_compose(conf_copy, "train", ["data=mini_structured"]), "train")
    records = load_training_records(OmegaConf.to_container(cfg.data, resolve=True))
    assert records and {r.source for r in records} == {"MedQA_Mixtral_CoT_sample"}
    assert data_arm({"data_label": "mini_structured"}) == "naive_cot_thinking"
