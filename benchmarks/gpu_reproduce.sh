#!/usr/bin/env bash
# The GPU reproduction in one command (about 8 minutes on one H100):
#   bash benchmarks/gpu_reproduce.sh DATA_DIR OUT [extra benchmarks.reproduce flags]
# DATA_DIR holds the four Fashion-MNIST IDX .gz files (or MNIST's) and kjv.txt
# (python -m benchmarks.reproduce --make-kjv DATA_DIR/kjv.txt writes it);
# OUT receives reproduce.json, reproduce.md and reproduce_<task>.png.
# Optimizers: SGD-Nesterov, Adam, SAM and Entropy-SGD under the authors' Lua
# recipe (Entropy-Adam on the char-LSTM), their PyTorch recipe and Pittorino
# et al.'s (Bocconi); the last two are image-net recipes, skipped on the
# char-LSTM. The report's cell status is against the gpu preset's budgets.
# Cells cut by TIME_LIMIT (seconds, default 480) are checkpointed under
# OUT/checkpoints/: rerunning the same command resumes them. PRESET=paper runs the
# paper's budgets instead (LeNet 80, char-LSTM 25 effective epochs on the whole
# text): more than one call's time, so call it again with the same OUT (keep
# OUT/reproduce.json and OUT/checkpoints/) until the report lists no missing cell.
set -euo pipefail
data_dir=${1:?give the data folder (IDX files and kjv.txt)}
out=${2:?give the output folder}
shift 2
# The package runs from this checkout; no install needed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$python" -u -m benchmarks.reproduce --preset "${PRESET:-gpu}" --tasks mnistfc,lenet,charlstm \
  --optimizers sgd,adam,sam,entropy,entropy_pytorch,entropy_bocconi \
  --data-dir "$data_dir" --text "$data_dir/kjv.txt" --time-limit "${TIME_LIMIT:-480}" \
  --out "$out" "$@"
