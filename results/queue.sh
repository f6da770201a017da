#!/usr/bin/env bash
# Start a long measurement queue in the background, pinned to one core, from a frozen copy of the code.
#   bash results/queue.sh NAME CORE LOG python -m train ... [args]       (from the repository root)
# The code (hspec/, train/ at HEAD) is exported to ~/.cache/hspec/work/code/NAME and the queue runs there, so
# that edits and moves in the working tree during the hours it runs cannot change it (`python -m` puts the
# current directory first on sys.path: the queue must start inside the copy), so give every path in the
# arguments as an absolute one. Each queue resumes from its saved state.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: bash results/queue.sh NAME CORE LOG command [args...]" >&2; exit 2; }
name=$1 core=$2 log=$3; shift 3
repo=$(git rev-parse --show-toplevel)
code=${HSPEC_WORK_DIR:-$HOME/.cache/hspec/work}/code/$name
rm -rf "$code.new" && mkdir -p "$code.new"
git -C "$repo" archive HEAD hspec train | tar -x -C "$code.new"
rm -rf "$code" && mv "$code.new" "$code"
. "${HSPEC_VENV:-/work/venv}/bin/activate"
export HSPEC_DATA_DIR=$(cd "$repo" && realpath -m "${HSPEC_DATA_DIR:-/work/shared/data}")
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$(dirname "$log")"
cd "$code"
nohup taskset -c "$core" "$@" >> "$log" 2>&1 &
echo "queue $name started on core $core: pid $! (code $code, log $log)"
