#!/usr/bin/env bash
# One GPU session's checks (device tool). Parts, as arguments (default: bench tests, about 5 minutes):
#   bench     the hspec and convolution benchmarks
#   tests     hspec's correctness tests on the GPU (float64 accuracy tests included)
#   resnet18  the ResNet18 row of the reproduction (up to 5 minutes more; run it in its own call when the
#             session's device time allows), packed as $OUT/resnet18-results.tgz: unpack it here with
#             `tar xzf resnet18-results.tgz -C results`, then `python -m train report`.
#   sweep:GROUP[:SECONDS]  any sweep group for at most SECONDS (default 240), e.g. sweep:batch-size-iters1000,
#             whose 1000 full-batch steps take hours on 2 CPU cores; the runs that finish come back packed as
#             $OUT/GROUP-results.tgz (unpack the same way); a run cut off by the limit is not published.
# Expects MNIST (and cifar10 for resnet18) under $HSPEC_DATA_DIR (the device run copies them into .devdata,
# which is not committed).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HSPEC_DATA_DIR=${HSPEC_DATA_DIR:-$PWD/.devdata}
PY=${PY:-python3}
parts=${*:-bench tests}

# Run a sweep group for at most $2 seconds into its own results tree and pack what was published (never a
# half-written run: the sweep publishes a run only when its record is complete).
sweep_part() {
  local group=$1 seconds=$2
  echo "== sweep $group on the GPU, at most $seconds s (each run records any reduction in its setting)"
  timeout "$seconds" $PY -m train sweep "$group" --results "/tmp/gpu-results-$group" --work /tmp/gpu-sweeps --no-progress
  [ -d "/tmp/gpu-results-$group" ] && tar czf "${OUT:-/tmp}/$group-results.tgz" -C "/tmp/gpu-results-$group" . \
    && echo "packed $group-results.tgz"
}
nvidia-smi -L
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
for part in $parts; do
  case $part in
    bench)
      echo "== hspec benchmarks"
      timeout 190 $PY -W ignore benchmarks/hspec_bench.py --sections top1000,hvp,eigsh,memory,compile
      echo "== convolution implementations on the GPU"
      timeout 45 $PY benchmarks/conv_cpu.py --repeats 5 ;;
    tests)
      echo "== hspec tests on the GPU (float64 accuracy tests included)"
      timeout 90 $PY -m pytest -q -x -p no:cacheprovider tests/hspec/test_hvp.py tests/hspec/test_lanczos.py \
        tests/hspec/test_drivers.py -k "not imports_no_training" 2>&1 | tail -4 ;;
    resnet18) sweep_part resnet18 300 ;;
    sweep:*)
      spec=${part#sweep:}; group=${spec%%:*}; seconds=240
      [ "$spec" != "$group" ] && seconds=${spec#*:}
      sweep_part "$group" "$seconds" ;;
    *) echo "unknown part $part (bench, tests, resnet18, sweep:GROUP[:SECONDS])"; exit 2 ;;
  esac
done
