"""The import rules of the layout, checked on the source (every import, top-level or inside a
function): a violation fails here before it becomes a cycle or a shipped test dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imports_of(path: Path, base: Path = REPO) -> set[str]:
    """Every module ``path`` imports (relative imports resolved against its package under ``base``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(base).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out |= {f"{module}.{a.name}" for a in node.names}
    return out


def modules(root: str, base: Path = REPO) -> dict[str, set[str]]:
    target = base / root
    paths = [target] if target.is_file() else sorted(target.rglob("*.py"))
    return {p.relative_to(base).as_posix(): imports_of(p, base) for p in paths}


def violations(root: str, forbidden: tuple[str, ...], base: Path = REPO) -> list[str]:
    return [f"{path} imports {name}" for path, names in modules(root, base).items() for name in sorted(names)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


RULES = [
    # Nothing shipped depends on benchmarks or test support (they are not in the wheel).
    ("fgrft", ("benchmarks", "tests")),
    ("hydra_plugins", ("benchmarks", "tests")),
    # The API engine takes its settings (price table included) as plain values.
    ("fgrft/llm", ("fgrft.config",)),
    # Error types and the redaction rule sit below everything else.
    ("fgrft/errors.py", ("fgrft",)),
    ("fgrft/secrets.py", ("fgrft",)),
    # Lower layers never reach up into the stages or the app.
    ("fgrft/records.py", ("fgrft.generation", "fgrft.training", "fgrft.evaluation",
                          "fgrft.reporting", "fgrft.tracking")),
    ("fgrft/scoring", ("fgrft.generation", "fgrft.training", "fgrft.evaluation",
                       "fgrft.reporting", "fgrft.tracking")),
    ("fgrft/llm", ("fgrft.generation", "fgrft.training", "fgrft.evaluation",
                   "fgrft.reporting", "fgrft.tracking", "fgrft.models")),
    ("fgrft/config", ("fgrft.generation", "fgrft.training", "fgrft.evaluation",
                      "fgrft.reporting", "fgrft.tracking", "fgrft.llm")),
    # Stage 1 and reporting do not use each other's or the later stages' internals.
    ("fgrft/generation", ("fgrft.training", "fgrft.evaluation", "fgrft.reporting")),
    ("fgrft/reporting", ("fgrft.generation", "fgrft.training")),
    # Training renders prompts through fgrft.prompts; the entrypoint hands it the evaluation job.
    ("fgrft/training", ("fgrft.evaluation", "fgrft.generation", "fgrft.reporting")),
    ("fgrft/prompts.py", ("fgrft.generation", "fgrft.training", "fgrft.evaluation",
                          "fgrft.reporting", "fgrft.tracking")),
    # The app wires the stages; nothing below it reaches back up.
    *((root, ("fgrft.app",)) for root in ("fgrft/tracking.py", "fgrft/generation", "fgrft/training",
                                          "fgrft/evaluation", "fgrft/reporting", "fgrft/config")),
    # Each stage uses the shared layers, not another stage's internals.
    ("fgrft/evaluation", ("fgrft.generation", "fgrft.training", "fgrft.reporting")),
    # Loaders, scorers and model plumbing sit below the stages and the call engine.
    ("fgrft/data", ("fgrft.generation", "fgrft.training", "fgrft.evaluation", "fgrft.reporting",
                    "fgrft.tracking", "fgrft.app", "fgrft.llm", "fgrft.models")),
    ("fgrft/scoring", ("fgrft.data", "fgrft.llm", "fgrft.models", "fgrft.app")),
    ("fgrft/models", ("fgrft.generation", "fgrft.training", "fgrft.evaluation", "fgrft.reporting",
                      "fgrft.tracking", "fgrft.app", "fgrft.llm", "fgrft.data")),
    # Test support is shared with benchmarks, so it must not depend on them.
    ("tests/support", ("benchmarks",)),
]


@pytest.mark.parametrize("root,forbidden", RULES, ids=[f"{r} !-> {','.join(f)}" for r, f in RULES])
def test_import_rule(root, forbidden):
    assert (REPO / root).exists(), f"{root} is gone: update the rule"
    assert violations(root, forbidden) == []


def test_tests_use_benchmarks_only_to_test_a_benchmark():
    users = sorted(path for path, names in modules("tests").items()
                   if any(n == "benchmarks" or n.startswith("benchmarks.") for n in names))
    assert users == ["tests/test_bench_scoring_labels.py"]


def test_a_violation_inside_a_function_or_by_relative_import_is_found(tmp_path):
    pkg = tmp_path / "fgrft" / "llm"
    pkg.mkdir(parents=True)
    (pkg / "ok.py").write_text("import json\nfrom fgrft.llm.errors import LLMError\n")
    (pkg / "late.py").write_text("def f():\n    from fgrft.config.locations import CONF_DIR\n")
    (pkg / "rel.py").write_text("from ..config import PRICES_FILE\n")
    assert violations("fgrft/llm", ("fgrft.config",), base=tmp_path) == [
        "fgrft/llm/late.py imports fgrft.config.locations",
        "fgrft/llm/late.py imports fgrft.config.locations.CONF_DIR",
        "fgrft/llm/rel.py imports fgrft.config",
        "fgrft/llm/rel.py imports fgrft.config.PRICES_FILE",
    ]


def test_the_api_engine_imports_only_errors_and_secrets_from_the_rest_of_fgrft():
    allowed = ("fgrft.llm", "fgrft.errors", "fgrft.secrets")
    outside = sorted({n for names in modules("fgrft/llm").values() for n in names
                      if (n == "fgrft" or n.startswith("fgrft."))
                      and not any(n == a or n.startswith(a + ".") for a in allowed)})
    assert outside == []
