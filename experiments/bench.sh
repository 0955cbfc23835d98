#!/usr/bin/env bash
# make bench: every benchmark script that exists so far; each prints its own figures
# and the machine it ran on. Real-data benchmarks need FGRFT_BENCHMARK_DIR.
set -uo pipefail
PY=${PY:-.venv/bin/python}
status=0
for mod in $($PY - <<'PY'
import pkgutil, benchmarks as b
print(" ".join(m.name for m in pkgutil.iter_modules(b.__path__) if not m.name.startswith("_")))
PY
); do
  echo "== python -m benchmarks.$mod"
  $PY -m benchmarks.$mod || status=$?
done
# The Stage 1 pipeline's other variants: chains that end early, revise or fall back; batch mode.
for args in "--mix realistic" "--mode batch --mix realistic"; do
  echo "== python -m benchmarks.pipeline $args"
  $PY -m benchmarks.pipeline $args || status=$?
done
exit $status
