#!/usr/bin/env bash
# The GPU checks of the benchmarks, one command for a lent accelerator (its parts' limits: 560 s):
#   bash benchmarks/gpu_checks.sh DATA_DIR OUT
# DATA_DIR: the four Fashion-MNIST IDX .gz files and kjv.txt (see benchmarks/gpu_reproduce.sh).
# OUT receives gpu_results.tgz (speed, reproduction, scaling results) and gpu_log.txt.
# Each part has its own time limit, so one failure leaves the others' results.
set -uo pipefail
data_dir=${1:?give the data folder}
out=${2:?give the output folder}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
work=$(mktemp -d)
{
  nvidia-smi -L
  "$python" -c "import jax, optax, flax; print('jax', jax.__version__, jax.devices(), 'optax', optax.__version__, 'flax', flax.__version__)"
  timeout "${SPEED_LIMIT:-140}" "$python" -m benchmarks.speed --repeats 5 --out "$work/speed_gpu"
  echo "speed exit $?"
  # The large model: a ~63 M-parameter transformer LM (targets: <= 1.05x optax SGD per gradient).
  timeout "${LM_LIMIT:-100}" "$python" -m benchmarks.speed --models lm --inner-steps 5 20 \
    --repeats 5 --no-torch --out "$work/speed_lm_gpu"
  echo "speed lm exit $?"
  PYTHON="$python" TIME_LIMIT="${REPRO_TIME_LIMIT:-240}" timeout "${REPRO_LIMIT:-280}" \
    bash benchmarks/gpu_reproduce.sh "$data_dir" "$work/reproduce_gpu"
  echo "reproduce exit $?"
  timeout "${SCALING_LIMIT:-40}" "$python" -m benchmarks.scaling --devices 1 --out "$work/scaling_gpu"
  echo "scaling exit $?"
} 2>&1 | tee "$out/gpu_log.txt"
tar czf "$out/gpu_results.tgz" -C "$work" .
