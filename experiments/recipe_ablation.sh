#!/usr/bin/env bash
# The recipe ablation (conf/experiment/recipe_ablation.yaml): what this project's Stage 1 variant buys.
#   SCALE=toy bash experiments/recipe_ablation.sh                offline, CPU, the embedded model
#   BENCHMARK_DIR=<dir> bash experiments/recipe_ablation.sh     full scale (OPENAI_API_KEY, CUDA GPUs)
#   1. Stage 1 with recipe=thesis and recipe=fgrft_plus (one multirun)
#   2. one training arm per recipe on the questions both kept, each evaluated (evaluate_after)
#   3. the report: both arms under both scorers
set -euo pipefail
PY=${PY:-.venv/bin/python}
EXP=recipe_ablation
SCALE=${SCALE:-full}
started=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - started ))s] $*"; }

if [ "$SCALE" = "toy" ]; then
  generate=(scale=toy)
  train=(scale=toy)
else
  if [ -z "${BENCHMARK_DIR:-${FGRFT_BENCHMARK_DIR:-}}" ]; then
    echo "recipe_ablation: set BENCHMARK_DIR (the thesis benchmark files) or SCALE=toy; stopping before any work." >&2
    exit 2
  fi
  dir=${BENCHMARK_DIR:-$FGRFT_BENCHMARK_DIR}
  generate=(+experiment=fgrft_data "benchmark.dir=$dir")
  train=("benchmark.dir=$dir")
fi

step "Stage 1, both recipes: python -m fgrft.generate -m ${generate[*]} recipe=thesis,fgrft_plus experiment_name=$EXP"
$PY -m fgrft.generate -m "${generate[@]}" recipe=thesis,fgrft_plus experiment_name=$EXP
# Each job's records.jsonl in the newest Stage 1 sweep, by the recipe its config.yaml names;
# a recipe without one stops the script here.
found=$($PY - "$EXP" <<'PY'
import sys
from pathlib import Path
import yaml
from fgrft.records import CONFIG_FILE, RECORDS_FILE
sweeps = sorted(Path("outputs/generate", sys.argv[1]).glob("multirun-*"), key=lambda p: p.stat().st_mtime)
if not sweeps:
    sys.exit("recipe_ablation: no Stage 1 sweep under outputs/generate/" + sys.argv[1])
found = {}
for records in sweeps[-1].glob(f"*/{RECORDS_FILE}"):
    found[yaml.safe_load((records.parent / CONFIG_FILE).read_text())["recipe"]] = records.resolve()
missing = [r for r in ("thesis", "fgrft_plus") if r not in found]
if missing:
    sys.exit(f"recipe_ablation: {sweeps[-1]} has no {RECORDS_FILE} for recipe {', '.join(missing)}")
for recipe in ("thesis", "fgrft_plus"):
    print(f"recipe_records.{recipe}={found[recipe]}")
PY
)
mapfile -t records <<<"$found"
for r in "${records[@]}"; do echo "${r%%=*}: $(wc -l < "${r#*=}") records kept (${r#*=})"; done

step "Stage 2 + evaluation, one arm per recipe: python -m fgrft.train -m +experiment=$EXP ${train[*]} ${records[*]}"
$PY -m fgrft.train -m +experiment=$EXP "${train[@]}" "${records[@]}"

step "Report: python -m fgrft.report experiment_name=$EXP"
$PY -m fgrft.report experiment_name=$EXP
report=$(ls -t outputs/report/$EXP/*/tables.md | head -1)
step "done in $(( $(date +%s) - started ))s; report: $report"
