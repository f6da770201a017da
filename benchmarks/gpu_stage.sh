#!/usr/bin/env bash
# Stage, as paths that git ignores, what a device run of benchmarks/gpu_check.sh needs beyond the repository, and
# print the device tool's `carry` list for them:
#   bash benchmarks/gpu_stage.sh [RUN_DIR [EPOCH]]                       (from the repository root)
# .devdata/: MNIST, CIFAR-10 and tiny Shakespeare from $HSPEC_DATA_DIR (default ../shared/data), about 26 MB.
# .devrun/<run>/: a run's config.json, metrics.jsonl and one checkpoint (default: the Hessian-sample study's
# reference, ~/.cache/hspec/work/runs/lenet-mnist-sgd at epoch 50, 0.5 MB): the study recognises the network by its
# bytes, so the pieces the GPU computes belong to the same network as the CPU's. .devrun/work/: the pieces of its
# Hessian-sample study finished so far (under ~/.cache/hspec/work or $HSPEC_WORK_DIR), which the device skips.
set -euo pipefail
run=${1:-${HSPEC_WORK_DIR:-$HOME/.cache/hspec/work}/runs/lenet-mnist-sgd}
epoch=$(printf 'epoch_%05d' "${2:-50}")
data=${HSPEC_DATA_DIR:-../shared/data}
[ -d "$run/checkpoints/$epoch" ] || { echo "no checkpoint $run/checkpoints/$epoch: train it first" >&2; exit 2; }
rm -rf .devdata .devrun
mkdir -p .devdata ".devrun/$(basename "$run")/checkpoints"
for set in mnist cifar10 tinyshakespeare; do
  [ -d "$data/$set" ] && cp -r "$data/$set" .devdata/ && chmod -R u+w ".devdata/$set"
done
cp "$run/config.json" "$run/metrics.jsonl" ".devrun/$(basename "$run")/"
cp -r "$run/checkpoints/$epoch" ".devrun/$(basename "$run")/checkpoints/"
# The study's finished pieces of this network (a few kB each), so that the device skips them.
pieces=${HSPEC_WORK_DIR:-$HOME/.cache/hspec/work}/hessian-sample
for folder in "$pieces"/"$(basename "$run")"-epoch*/pieces; do
  [ -d "$folder" ] || continue
  mkdir -p ".devrun/work/hessian-sample/$(basename "$(dirname "$folder")")"
  cp -r "$folder" ".devrun/work/hessian-sample/$(basename "$(dirname "$folder")")/"
done
{ git check-ignore -q .devdata && git check-ignore -q .devrun; } \
  || { echo ".devdata/ and .devrun/ must be ignored by git" >&2; exit 2; }
echo "staged $(du -sh .devdata | cut -f1) of data and $(du -sh .devrun | cut -f1) of runs;" \
  "carry: [\".devdata\", \".devrun\"]"
