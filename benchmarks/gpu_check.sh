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
#   llm-nano[:SECONDS]  the paper's gpt2-nano-shakespeare tracking (python -m train llm), as much of it as fits
#             SECONDS (default 480), with the spectrum overrides that fit one 80 GB GPU ($LLM_NANO_SETS, default
#             "num_starts=1 max_lanczos_steps=5000": 5,000 x 1,770,240 float32 values, 35.4 GB, and as much again
#             for the rows used, copied on their way back at the end; the preset's own 3 x 12,000 is refused,
#             254.9 GB). Every checkpoint measured before the limit comes back in
#             $OUT/llm-nano-results.tgz: out/ (config.json, steps/<step>/results.json, tracking.json, table.txt),
#             work/metrics.jsonl and work/config.json (no checkpoints), and log.txt. Unpack with
#             `tar xzf llm-nano-results.tgz -C /tmp/nano` and read out/tracking.json.
#   hessian-sample[:SECONDS]  the Hessian-sample study (python -m train hessian-sample, issue 24) of the run staged
#             in .devrun/ (benchmarks/gpu_stage.sh: the reference lenet-mnist-sgd at epoch 50, whose network the
#             study recognises by its bytes), for at most SECONDS (default 480): the whole training set first
#             ($HS_SIZES, default "all"; $HS_STATES, default "trained,init"), then the study's other sizes while time
#             is left ($HS_THEN, default "1000,2000,4000,8000,16000"; empty: none). Every piece finished before the limit
#             comes back in $OUT/hessian-sample-results.tgz as hessian-sample/<name>/pieces/*.json, the form the
#             study keeps under its work folder: `tar xzf hessian-sample-results.tgz -C ~/.cache/hspec/work`, then
#             any `python -m train hessian-sample --run RUN ...` (or --carriers-only) puts them into series.json
#             and skips them. A piece cut off by the limit is lost (no Krylov state comes back).
# Expects MNIST (and cifar10 for resnet18, tinyshakespeare for llm-nano) under $HSPEC_DATA_DIR: stage them with
# `bash benchmarks/gpu_stage.sh`, which copies them into .devdata/ (ignored by git; carry it) and prints the carry list.
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
# The paper's nano LLM run for at most $1 seconds; whatever checkpoints it measured are packed (each results.json
# is written whole, and tracking.json is rebuilt after each checkpoint).
llm_nano_part() {
  local seconds=$1 dir=${LLM_NANO_DIR:-/tmp/gpu-llm-nano} sets=() kv
  for kv in ${LLM_NANO_SETS:-num_starts=1 max_lanczos_steps=5000}; do sets+=(--set "$kv"); done
  rm -rf "$dir" && mkdir -p "$dir"
  echo "== llm-nano: gpt2-nano-shakespeare ${sets[*]}, at most $seconds s" | tee "$dir/log.txt"
  timeout "$seconds" $PY -m train llm --preset gpt2-nano-shakespeare "${sets[@]}" --out "$dir/out" --work "$dir/work" \
    --no-progress 2>&1 | tee -a "$dir/log.txt"
  echo "llm-nano exit status ${PIPESTATUS[0]} (124: cut off by the time limit)" | tee -a "$dir/log.txt"
  local files=(log.txt)
  for f in out work/metrics.jsonl work/config.json; do [ -e "$dir/$f" ] && files+=("$f"); done
  tar czf "${OUT:-/tmp}/llm-nano-results.tgz" -C "$dir" "${files[@]}" && echo "packed llm-nano-results.tgz: ${files[*]}"
}
# The Hessian-sample study of the staged run for at most $1 seconds: the whole training set first ($HS_SIZES), then,
# while time is left, the other pieces of the study ($HS_THEN, 3 draws up to 4000). The pieces finished here are
# packed as the study keeps them (each is written whole when its spectrum is done); pieces staged with the run
# (.devrun/work, benchmarks/gpu_stage.sh) are skipped, not computed again.
hessian_sample_part() {
  local seconds=$1 run=${HS_RUN:-$PWD/.devrun/lenet-mnist-sgd} work=${HS_WORK:-/tmp/gpu-hessian-sample}
  local log t0 left status sizes draws
  rm -rf "$work" && mkdir -p "$work/hessian-sample"
  [ -d "${HS_STAGED:-$PWD/.devrun/work}/hessian-sample" ] && cp -r "${HS_STAGED:-$PWD/.devrun/work}/hessian-sample/." \
    "$work/hessian-sample/"
  log=$work/hessian-sample/gpu-log.txt
  touch "$work/.start" && t0=$(date +%s)
  for sizes in "${HS_SIZES:-all}" ${HS_THEN-1000,2000,4000,8000,16000}; do
    left=$(( seconds - ($(date +%s) - t0) ))
    [ "$left" -gt 20 ] || break
    draws=1; [ "$sizes" != "${HS_SIZES:-all}" ] && draws=3
    echo "== hessian-sample: $run, sizes $sizes (draws $draws), states ${HS_STATES:-trained,init}, at most $left s" \
      | tee -a "$log"
    HSPEC_LINEARIZE_MAX_EXAMPLES=${HSPEC_LINEARIZE_MAX_EXAMPLES:-60000} timeout "$left" $PY -m train hessian-sample \
      --run "$run" --sizes "$sizes" --draws "$draws" --states "${HS_STATES:-trained,init}" --work "$work" \
      --data-dir "$HSPEC_DATA_DIR" --results "${HS_RESULTS:-$PWD/results}" --no-progress 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
    echo "hessian-sample exit status $status (124: cut off by the time limit)" | tee -a "$log"
    [ "$status" = 0 ] || break
  done
  local files=()
  mapfile -t files < <(cd "$work" && find hessian-sample -path '*/pieces/*.json' -newer .start | sort)
  tar czf "${OUT:-/tmp}/hessian-sample-results.tgz" -C "$work" hessian-sample/gpu-log.txt "${files[@]}" \
    && echo "packed hessian-sample-results.tgz: ${#files[@]} pieces"
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
    llm-nano|llm-nano:*)
      seconds=480; [ "$part" != llm-nano ] && seconds=${part#llm-nano:}
      llm_nano_part "$seconds" ;;
    hessian-sample|hessian-sample:*)
      seconds=480; [ "$part" != hessian-sample ] && seconds=${part#hessian-sample:}
      hessian_sample_part "$seconds" ;;
    *) echo "unknown part $part (bench, tests, resnet18, sweep:GROUP[:SECONDS], llm-nano[:SECONDS]," \
            "hessian-sample[:SECONDS])"; exit 2 ;;
  esac
done
