#!/usr/bin/env bash
# The regime map on an accelerator, one resumable call (at most TIME_LIMIT seconds of training,
# default 480, within a 10-minute call):
#   bash benchmarks/gpu_regimes.sh DATA_DIR OUT [extra benchmarks.regimes flags]
# DATA_DIR holds the four Fashion-MNIST IDX .gz files; OUT receives regimes.json, regimes.md
# and regimes.png. Call it again with the same OUT (keep OUT/regimes.json) until the report
# lists no missing cell. Every record carries its provenance: final runs are judged only
# against final runs of the same device, commit and jax, so finish a regime's final runs on one
# kind of device (the CPU map lives in benchmarks/results/regimes/).
set -euo pipefail
data_dir=${1:?give the data folder (Fashion-MNIST IDX files)}
out=${2:?give the output folder}
shift 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$python" -u -m benchmarks.regimes --data-dir "$data_dir" --time-limit "${TIME_LIMIT:-480}" \
  --out "$out" "$@"
