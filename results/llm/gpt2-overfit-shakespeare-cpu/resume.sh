#!/usr/bin/env bash
# (Re)start the CPU overfitting LLM queue (issue 25) on ONE core, skipping every finished piece.
#   bash results/llm/gpt2-overfit-shakespeare-cpu/resume.sh            from the repository root
# The code runs from a snapshot (HEAD, exported to the work directory) so that edits in the working tree
# during the hours it runs cannot change it; results are written here, checkpoints, the training curve and
# the Krylov state of the measurement under way to ~/.cache/hspec/work/llm/<preset>/. Log: queue.log there.
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
preset=gpt2-overfit-shakespeare-cpu
work=${HSPEC_LLM_WORK:-$HOME/.cache/hspec/work/llm/$preset}
code=$work/code
mkdir -p "$work"
rm -rf "$code.new" && mkdir -p "$code.new"
git -C "$repo" archive HEAD hspec train | tar -x -C "$code.new"
rm -rf "$code" && mv "$code.new" "$code"
. "${HSPEC_VENV:-/work/venv}/bin/activate"
export HSPEC_DATA_DIR=${HSPEC_DATA_DIR:-/work/shared/data}
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$code"
cd "$repo"
taskset -c "${HSPEC_CORE:-1}" nohup python -m train.llm.overfit --out "$repo/results/llm/$preset" --work "$work" \
  "$@" >> "$work/queue.log" 2>&1 &
echo "queue started: pid $! (log $work/queue.log)"
