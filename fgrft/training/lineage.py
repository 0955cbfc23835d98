"""Where a training run keeps its state: intermediate checkpoints, the final checkpoint, lineage.

* ``<run>/checkpoints/checkpoint-N``: Trainer checkpoints (weights, optimizer,
  scheduler, RNG states, trainer state with the data position), at most
  ``trainer.max_ckpts``. The trainer state is written last, so a directory
  without a readable ``trainer_state.json`` is one a kill interrupted; it is
  removed and the run resumes from the newest complete one.
* ``<run>/checkpoint``: the final model for inference: safetensors in the base
  model's dtype (bf16 for the models here, which vLLM then loads without
  casting), the tokenizer with the STOCK chat template, and ``fgrft.json``
  (``base_model``, ``data_hash``, ``train_run_id``, ``steps``) that evaluation
  reads back. It is written to a temporary directory and renamed into place,
  so it either exists whole or not at all.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from fgrft.records import LINEAGE_FILE

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "checkpoint"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The newest complete Trainer checkpoint; incomplete ones (a kill mid-save) are removed."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in root.iterdir()
                    if p.is_dir() and (m := _STEP.match(p.name))), reverse=True)
    for _, path in found:
        if _complete(path):
            return path
        log.warning("removing incomplete checkpoint %s (interrupted while saving)", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


DATA_STAMP = "fgrft-data.json"


def claim_checkpoints(checkpoints_dir: str | Path, data_hash: str) -> None:
    """Tie the intermediate checkpoints to the data they train on.

    The run directory follows the command line, not the data: resuming after
    the records file changed would silently mix two training sets, so it is
    refused.
    """
    root = Path(checkpoints_dir)
    stamp = root / DATA_STAMP
    if stamp.is_file():
        previous = json.loads(stamp.read_text()).get("data_hash")
        if previous != data_hash:
            raise RuntimeError(
                f"{root} holds checkpoints of a run on other training data (data_hash {previous}, now "
                f"{data_hash}); remove that directory or pick another hydra.run.dir to start over")
        return
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"data_hash": data_hash}) + "\n")


def read_lineage(checkpoint: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(checkpoint) / LINEAGE_FILE).read_text())
    except (OSError, ValueError):
        return None


def save_final_checkpoint(model: Any, tokenizer: Any, directory: str | Path, lineage: Mapping[str, Any],
                          dtype: Any = None, state_dict: Mapping[str, Any] | None = None) -> Path:
    """Save model (cast to ``dtype``), tokenizer and lineage atomically into ``directory``.

    ``state_dict``: the consolidated weights when the model's own parameters are
    ZeRO-3 shards (empty on every rank); ``model`` then only supplies config and names.
    """
    target = Path(directory)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    extra: dict[str, Any] = {}
    if state_dict is not None:
        extra["state_dict"] = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
                               for k, v in state_dict.items()}
    elif dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(tmp, safe_serialization=True, **extra)
    if state_dict is not None and dtype is not None:
        # save_pretrained names the dtype of the (ZeRO-3 shell) parameters; the file holds ``dtype``.
        config = json.loads((tmp / "config.json").read_text())
        config["dtype"] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(tmp)
    (tmp / LINEAGE_FILE).write_text(json.dumps(dict(lineage), indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
