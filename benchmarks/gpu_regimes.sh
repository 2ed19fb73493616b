#!/usr/bin/env bash
# The regime map and the paper's winning cell (char-LSTM, Adam vs Entropy-Adam) on an
# accelerator, one resumable call within a 10-minute limit:
#   bash benchmarks/gpu_regimes.sh DATA_DIR OUT [extra benchmarks.regimes flags]
# DATA_DIR holds the four Fashion-MNIST IDX .gz files and, for the char-LSTM cell, kjv.txt
# (`bible -l200 'Gen1:1-Rev22:21'` of Debian's bible-kjv; see benchmarks/gpu_reproduce.sh).
# OUT receives regimes.json, regimes.md and regimes.png, and the char-LSTM cell's records in
# OUT/charlstm/. The map trains for at most TIME_LIMIT seconds (default 300), then the char-LSTM
# cell for at most LSTM_TIME_LIMIT (default 180; 0 skips it; a running cell stops at its next
# evaluation, checkpointed). Call it again with the same OUT (keep its files) until the report
# lists no missing cell. Every record carries its provenance: final runs are judged only
# against final runs of the same device, commit and jax, so finish a regime's final runs, and
# both char-LSTM cells, on one kind of device (the CPU map lives in
# benchmarks/results/regimes/).
set -euo pipefail
data_dir=${1:?give the data folder (Fashion-MNIST IDX files)}
out=${2:?give the output folder}
shift 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$python" -u -m benchmarks.regimes --data-dir "$data_dir" --time-limit "${TIME_LIMIT:-300}" \
  --out "$out" "$@"
if [ "${LSTM_TIME_LIMIT:-180}" != 0 ] && [ -f "$data_dir/kjv.txt" ]; then
  "$python" -u -m benchmarks.reproduce ${LSTM_PRESET:---preset paper} --tasks charlstm \
    --optimizers adam,entropy --text "$data_dir/kjv.txt" --time-limit "${LSTM_TIME_LIMIT:-180}" \
    --out "$out/charlstm"
  # The map's report shows the cell: rebuild it now that the cell has records.
  "$python" -m benchmarks.regimes --out "$out" --report-only "$@"
fi
