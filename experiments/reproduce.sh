#!/usr/bin/env bash
# make reproduce: the full chain behind the thesis tables, as the presets' commands.
#   DRY_RUN=1 make reproduce   prints the plan, the Stage 1 cost estimate (offline) and GPU hours
#   BENCHMARK_DIR=... make reproduce   runs it (needs OPENAI_API_KEY and CUDA GPUs)
# See experiments/README.md for the per-table runbooks and the assumptions behind the estimates.
set -euo pipefail
PY=${PY:-.venv/bin/python}
BENCHMARK_DIR=${BENCHMARK_DIR:-${FGRFT_BENCHMARK_DIR:-<dir holding eval_data_clinical.json and eval_data_medmcqa.json>}}
RECORDS="<records.jsonl of step 1>"

plan=(
  "$PY -m fgrft.generate +experiment=fgrft_data benchmark.dir=$BENCHMARK_DIR"
  "$PY -m fgrft.train -m +experiment=ablation_naive fgrft_records=$RECORDS benchmark.dir=$BENCHMARK_DIR scorer=thesis"
  "$PY -m fgrft.evaluate -m +experiment=base benchmark.dir=$BENCHMARK_DIR scorer=thesis"
  "$PY -m fgrft.evaluate -m +experiment=baselines benchmark.dir=$BENCHMARK_DIR scorer=thesis"
  "$PY -m fgrft.evaluate -m +experiment=temperature_sweep model.path=<the FGRFT arm's checkpoint/> benchmark.dir=$BENCHMARK_DIR scorer=thesis"
  "$PY -m fgrft.report experiments=[fgrft_data,ablation_naive,base,baselines,temperature_sweep]"
)

echo "The thesis chain (generate 5k -> three training arms -> every evaluation -> report):"
for i in "${!plan[@]}"; do echo "  $((i + 1)). ${plan[$i]}"; done
echo
echo "Expected GPU time (8x A100/H100-80GB; experiments/README.md has the assumptions):"
echo "  training: about 16 min per arm (thesis) x 3 arms; evaluation: about 10-20 min per model"
echo "  and temperature on 3,273 items with vLLM (TP 8) -> roughly 3-4 GPU-node hours in all."

if [ "${DRY_RUN:-0}" = "1" ]; then
  echo
  echo "Stage 1 cost estimate (offline dry run):"
  # Stage 1 refuses a real source without the benchmarks of its contamination check; the
  # estimate alone does not need them.
  if [[ "$BENCHMARK_DIR" == "<"* ]]; then
    guard="contamination.mode=skip"
    echo "  (BENCHMARK_DIR not set: estimated without the contamination check, which drops a few questions)"
  else
    guard="benchmark.dir=$BENCHMARK_DIR"
  fi
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $PY -m fgrft.generate +experiment=fgrft_data dry_run=true "$guard" \
    hydra.run.dir="$(mktemp -d)" 2>&1 | grep -vE "^\[.*\]\[(HYDRA|mlflow|alembic)" || true
  echo
  echo "DRY_RUN=1: nothing was run."
  exit 0
fi

if [ -z "${OPENAI_API_KEY:-}" ]; then
  echo "make reproduce: OPENAI_API_KEY is not set (Stage 1 calls gpt-4o and gpt-5); stopping before any work." >&2
  exit 2
fi
if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.device_count() >= 1 else 1)'; then
  echo "make reproduce: no CUDA GPU visible (training and evaluation need GPUs; install .[gpu]); stopping before any work." >&2
  exit 2
fi
if [[ "$BENCHMARK_DIR" == "<"* ]]; then
  echo "make reproduce: set BENCHMARK_DIR to the thesis benchmark files; stopping before any work." >&2
  exit 2
fi
for cmd in "${plan[@]}"; do
  if [[ "$cmd" == *"<records.jsonl of step 1>"* ]]; then
    records=$(ls -t outputs/generate/fgrft_data/*/records.jsonl | head -1)
    cmd=${cmd/<records.jsonl of step 1>/$records}
  fi
  if [[ "$cmd" == *"<the FGRFT arm"* ]]; then
    checkpoint=$(ls -td outputs/train/ablation_naive/multirun-*/data-fgrft_5k*/checkpoint | head -1)
    cmd=${cmd/<the FGRFT arm\'s checkpoint\/>/$checkpoint}
  fi
  echo "== $cmd"
  eval "$cmd"
done
