#!/usr/bin/env bash
# (Re)start the CPU overfitting LLM queue (issue 25) on ONE core, skipping every finished piece.
#   bash results/llm/gpt2-overfit-shakespeare-cpu/resume.sh [--only PIECE ...]      from the repository root
# It runs from a frozen copy of the code (results/queue.sh); results are written here, checkpoints, the training
# curve and the Krylov state of the measurement under way to ~/.cache/hspec/work/llm/<preset>/. Log: queue.log there.
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
preset=gpt2-overfit-shakespeare-cpu
work=${HSPEC_LLM_WORK:-$HOME/.cache/hspec/work/llm/$preset}
mkdir -p "$work"
bash "$repo/results/queue.sh" "llm-$preset" "${HSPEC_CORE:-1}" "$work/queue.log" \
  python -m train.llm.overfit --out "$repo/results/llm/$preset" --work "$work" "$@"
