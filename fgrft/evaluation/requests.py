"""What a backend is asked to do and what it hands back, plus the resumable sink.

Completions are appended to ``completions.partial.jsonl`` in the run directory
as they finish, so an interrupted evaluation re-runs only what is missing.

Sampling is the call engine's one type (:class:`fgrft.llm.Sampling`, output cap ``max_tokens``),
filled from the ``temperature`` group (``temperature.max_new_tokens`` is the cap).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from fgrft.llm.config import Sampling

PARTIAL_FILE = "completions.partial.jsonl"


@dataclass
class GenerationRequest:
    """One (item, sample) to generate."""

    key: str  # "<item id>:<sample>"
    messages: list[dict[str, str]]
    seed: int
    prompt_token_ids: list[int] = field(default_factory=list)


@dataclass
class Completion:
    key: str
    text: str
    finish_reason: str | None
    output_tokens: int
    prompt_token_ids_hash: str | None = None


def sample_key(item_id: str, sample: int) -> str:
    return f"{item_id}:{sample}"


def request_seed(seed: int, item_id: str, sample: int) -> int:
    """A per-request seed from (run seed, item id, sample index): stable across batch
    sizes, processes and resumption, distinct across samples."""
    digest = hashlib.sha256(f"{seed}:{item_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def token_ids_hash(ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt token ids of one conversation under the model's own chat template."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


class CompletionSink:
    """Append-only, fsync'd record of finished completions; survives kill -9."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def in_dir(cls, run_dir: str | Path) -> "CompletionSink":
        return cls(Path(run_dir) / PARTIAL_FILE)

    def done(self) -> dict[str, Completion]:
        """Completions already on disk; a line cut by a crash is dropped (and redone)."""
        out: dict[str, Completion] = {}
        if not self.path.exists():
            return out
        good_bytes = 0
        with self.path.open("rb") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                if not line.endswith(b"\n"):
                    break
                out[obj["key"]] = Completion(**obj)
                good_bytes += len(line)
        if good_bytes != self.path.stat().st_size:
            os.truncate(self.path, good_bytes)  # later appends must start on a clean line
        return out

    def append(self, completions: Iterable[Completion]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for c in completions:
                f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
