#!/usr/bin/env bash
# The GPU measurements of the GPU issue, in parts that each fit a 10-minute device command.
#
#   bash scripts/gpu_session.sh check  OUT [--agents fb td3]  # gpu_check.py, published sizes, every mode
#   bash scripts/gpu_session.sh bench  OUT   # bench_updates: fb/fre/td3/fbm walker in the four modes
#   bash scripts/gpu_session.sh bench2 OUT   # bf16, reward inference, scaling table, metamotivo
#   bash scripts/gpu_session.sh train  OUT   # zsrl collect + zsrl train (metrics.csv updates/s)
#   bash scripts/gpu_session.sh profile OUT  # torch.profiler of the compiled FB step (kernels)
#   bash scripts/gpu_session.sh tiny   OUT   # gpu_check.py at the tiny size
#   bash scripts/gpu_session.sh maze   OUT   # the quickstart on CUDA, compiled + CUDA graphs
#   bash scripts/gpu_session.sh protocol OUT # benchmark.py --gpu (the published-size protocol),
#                                            # 540 s per call: repeat the call until it prints
#                                            # its tables (each call resumes the last)
#
# Extra arguments after OUT go to gpu_check.py (check, tiny). OUT receives the JSON, logs and
# run directories. On the project's device machine, after
# `bash ../shared/device/bundle.sh` here: `. .devcarry/setup.sh && bash scripts/gpu_session.sh check $OUT`.
set -euo pipefail
part=${1:?part: check, tiny, bench, bench2, train, profile, maze or protocol}
out=${2:?output directory}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>/dev/null || true

case "$part" in
  check)
    tag=$(echo "${*:3}" | tr -c 'a-z0-9\n' '_')
    "$py" "$here/gpu_check.py" --device cuda --sizes published --updates 300 "${@:3}" \
      --json "$out/gpu_check_published$tag.json" 2>&1 | tee "$out/gpu_check_published$tag.log"
    ;;
  tiny)
    "$py" "$here/gpu_check.py" --device cuda --sizes tiny --updates 300 "${@:3}" \
      --json "$out/gpu_check_tiny.json" 2>&1 | tee "$out/gpu_check_tiny.log"
    ;;
  bench)
    for mode in "false false" "true false" "false true" "true true"; do
      set -- $mode
      "$py" "$here/bench_updates.py" --presets fb/walker fre/walker td3/walker fbm/walker --device cuda \
        --compile "$1" --cudagraphs "$2" --steps 500 --warmup 10 \
        --json "$out/bench_compile-$1_graphs-$2.json" 2>&1 | tee -a "$out/bench.log"
    done
    ;;
  bench2)
    "$py" "$here/bench_updates.py" --presets fb/walker --device cuda --precision bf16 --steps 500 \
      --warmup 10 --inference --json "$out/bench_bf16_inference.json" 2>&1 | tee -a "$out/bench2.log"
    # scaling with CUDA graphs only: one compilation per shape would not fit the time limit
    "$py" "$here/bench_updates.py" --presets fb/walker --device cuda --scaling --compile false \
      --cudagraphs true --steps 200 --warmup 10 --json "$out/bench_scaling.json" 2>&1 | tee -a "$out/bench2.log"
    anchor=${METAMOTIVO_BENCH:-$here/../shared/anchors/metamotivo_fb_bench.py}
    if [ -n "${METAMOTIVO_SRC:-}" ] && [ -f "$anchor" ]; then  # the anchor, same sizes, same call
      for flags in "" "--compile" "--compile --cudagraphs"; do
        "$py" "$anchor" --device cuda --configs walker \
          --z-dim 100 --seconds 20 $flags 2>&1 | tee -a "$out/bench2.log"
      done
    fi
    ;;
  train)
    data="$out/data_walker"
    [ -d "$data" ] || zsrl collect --domain walker --collector random --transitions 50000 \
      --out "$data" --no-progress
    for preset in fb/walker fre/walker; do
      zsrl train --config "$preset" --dataset "$data" --out "$out/run_${preset%%/*}" --overwrite \
        train.steps=20000 train.log_every=1000 train.checkpoint_every=20000 train.progress=false
    done
    zsrl train --config td3/walker --dataset "$data" --out "$out/run_td3" --overwrite task=walk \
      train.steps=20000 train.log_every=1000 train.checkpoint_every=20000 train.progress=false
    for run in "$out"/run_*; do
      echo "$run: updates_per_s by log period (the first includes compilation):"
      "$py" -c "import csv,sys; print([r['updates_per_s'] for r in csv.DictReader(open(sys.argv[1]))])" \
        "$run/metrics.csv"
    done | tee "$out/train_updates_per_s.txt"
    ;;
  profile)
    "$py" "$here/bench_updates.py" --presets fb/walker --device cuda --cudagraphs false --steps 20 \
      --warmup 10 --profile 20 --trace "$out/fb_walker_trace.json" \
      --json "$out/profile_fb_walker.json" 2>&1 | tee "$out/profile.log"
    ;;
  maze)
    zsrl pipeline --out "$out/maze_cuda" --no-progress train.device=cuda train.compile=true \
      train.cudagraphs=true 2>&1 | tee "$out/maze_cuda.log"
    ;;
  protocol)  # walker with three training seeds, the other domains with one (README, Benchmark)
    deadline=$((SECONDS + ${PROTOCOL_SECONDS:-540}))
    bench() {
      local left=$((deadline - SECONDS))
      [ "$left" -gt 30 ] || return 124
      timeout -s TERM "$left" "$py" "$here/benchmark.py" --gpu --agents fb --oracle \
        --jobs "${JOBS:-4}" --out "$out/bench_gpu" --quiet "$@" 2>&1 | tee -a "$out/protocol.log"
    }
    rc=0
    { bench --domains walker --seeds 0,1,2 && bench --domains cheetah quadruped point_mass_maze; } || rc=$?
    [ "$rc" -eq 0 ] || echo "stopped ($rc): run the same command again to continue" | tee -a "$out/protocol.log"
    ;;
  *)
    echo "unknown part $part" >&2
    exit 2
    ;;
esac
