"""Values that old caches, runs and reports depend on, pinned as literals.

A refactor that changes any of these silently orphans existing response caches, resume
directories or report pairings (reports pair runs by ``items_hash`` and ``prompt_hash``), so
each is written out here as the code computed it; a change must be deliberate and announced.
"""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fgrft.config import CONF_DIR
from fgrft.config.resolvers import register_resolvers
from fgrft.data.benchmarks import benchmark_items, load_benchmark
from fgrft.prompts import items_hash, load_template, prompt_hash, render_all
from fgrft.evaluation.requests import sample_key
from fgrft.llm import build_request, profile_for, request_key
from fgrft.llm.config import EndpointSettings, Sampling
from fgrft.records import Question, item_id, stem_id


def test_question_id_and_stem_id():
    q = Question(source="medqa", question="A 45-year-old man presents with chest pain. What is the next step?",
                 options={"A": "ECG", "B": "Troponin", "C": "Aspirin", "D": "Discharge"},
                 answer_idx="A", answer="ECG")
    assert q.id == "8808ff797fde4ab0"
    assert q.stem_id == "6b2f22859c024b9c"
    # Case, spacing and trailing option lines do not change a stem's id.
    assert stem_id("What causes scurvy?\nA. Vitamin C deficiency\nB. Iron deficiency") == "289b869a6c669d3f"
    assert item_id("  What  causes SCURVY?\nA. Vitamin C deficiency\nB. Iron", {}) == "289b869a6c669d3f"


@pytest.mark.parametrize("kind", ["openai", "vllm"])
def test_response_cache_keys(kind):
    ep = EndpointSettings(base_url="http://127.0.0.1:1/v1", model="gpt-4o-2024-08-06", kind=kind)
    req = build_request(profile_for(ep), ep.model,
                        [{"role": "system", "content": "You are a doctor."}, {"role": "user", "content": "Q?"}],
                        Sampling(temperature=0.7, top_p=0.95, max_tokens=512, seed=42),
                        schema={"type": "object", "properties": {"answer": {"type": "string"}},
                                "required": ["answer"]},
                        attempt=1)
    assert req["seed"] == 1274436578
    assert request_key("generate", req, {"type": "object"}, 1) == \
        "d92c5c6d254e1c84256a59eaa050b82a1f31c86ce3410d3881cbe38af6c9b018"
    assert request_key("generate", req, None, 0, scope="ckpt-1") == \
        "6a00b06ab469c3d683c733abecf85313b0d126e6bb79df97ba74b0012d836f99"


def test_evaluation_sample_key():
    assert sample_key("173350d8a02686ef", 2) == "173350d8a02686ef:2"


def test_bundled_sample_items_and_prompt_hashes():
    questions = benchmark_items(load_benchmark({"name": "sample"}))
    ids = [q.id for q in questions]
    assert len(ids) == 36 and ids[:3] == ["173350d8a02686ef", "f73912dc20a6780b", "dfb8dcb61468fc2e"]
    assert items_hash(ids) == "4e0eb3e864191d01"
    hashes = {}
    for name in ("eval_thesis.txt", "eval_strict.txt"):
        template = load_template(name)
        hashes[name] = prompt_hash(template, render_all(template, questions))
    assert hashes == {"eval_thesis.txt": "d52ff529929119de", "eval_strict.txt": "872bfbad85f2d548"}


def test_stage1_items_hash_of_the_bundled_sample_is_the_evaluations():
    # Stage 1 logged its own items_hash until one function served both stages: 828a2949320a3600
    # for these ids then; the evaluation's value (reports pair runs by it) is the one kept.
    from fgrft.generation import job

    ids = [q.id for q in benchmark_items(load_benchmark({"name": "sample"}))]
    assert job.items_hash(ids) == "4e0eb3e864191d01"


RUN_DIRS = [
    ("evaluate", [], "evaluate/default/default"),
    ("evaluate", ["model=smol", "temperature=t0.5"], "evaluate/default/model-smol_temperature-t0.5-663103bb"),
    ("evaluate", ["model=smol", "resume=true"], "evaluate/default/model-smol-58487178"),
    ("train", ["+experiment=fgrft", "scale=toy"], "train/fgrft/+experiment-fgrft_scale-toy-8a786941"),
    ("generate", ["source=sample", "generator=embedded", "scale=toy"],
     "generate/default/generator-embedded_scale-toy_source-sample-c4cacd1a"),
    ("evaluate", ["inference=replay", "inference.path=/data/run 1/predictions.jsonl"],
     "evaluate/default/inference.path-_data_run_1_predictions.jsonl_inference-repla-cf8cb297"),
]


def test_run_directory_names():
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        got = []
        for entrypoint, overrides, _ in RUN_DIRS:
            cfg = compose(config_name=entrypoint, overrides=overrides, return_hydra_config=True)
            got.append(Path(cfg.hydra.run.dir).relative_to(Path(cfg.paths.outputs)).as_posix())
    assert got == [expected for _, _, expected in RUN_DIRS]
