#!/usr/bin/env bash
# The GPU reproduction in one command (about 6 minutes on one H100):
#   bash benchmarks/gpu_reproduce.sh DATA_DIR OUT [extra reproduce.py flags]
# DATA_DIR holds the four Fashion-MNIST IDX .gz files (or MNIST's) and kjv.txt
# (python benchmarks/reproduce.py --make-kjv DATA_DIR/kjv.txt writes it);
# OUT receives reproduction.json, reproduction.md and reproduction_<task>.png.
set -euo pipefail
data_dir=${1:?give the data folder (IDX files and kjv.txt)}
out=${2:?give the output folder}
shift 2
# The package runs from this checkout; no install needed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$python" -u benchmarks/reproduce.py --preset gpu --tasks mnistfc,lenet,charlstm \
  --data-dir "$data_dir" --text "$data_dir/kjv.txt" --time-limit "${TIME_LIMIT:-330}" \
  --out "$out" "$@"
