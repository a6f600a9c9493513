#!/bin/bash
# Fine-tunes of the packaged model side by side on one CUDA GPU, each with the shipped
# recipe (BENCHMARKS.md, MODEL_CARD.md) plus its own options; for each run it writes
# NAME-final.safetensors (the last generator) and NAME-avg.safetensors (the mean of the
# second half of its kept generators and the last one) to $OUT, and logs.tgz.
#
#   deploy/gpu_finetunes.sh NAME="OPTIONS" [NAME="OPTIONS" ...]
#   deploy/gpu_finetunes.sh gc="--lr 8e-5 --lr-min 8e-6"        # how 0.10.0's run was made
#
# Environment (defaults in brackets): OUT [./gpu_out], WORK [/tmp/starnet-gpu], MIN
# minutes per run, building the crop pool included [7.9: 0.10.0's 6.8 minutes of
# training plus its 63-65 s pool build on the H200], POOL crops [1200], WORKERS crop processes per run [4],
# BATCH [16], THREADS torch CPU threads per run [1], DEV [cuda], STOP_AT seconds after
# the start at which runs still going get SIGTERM and stop at their next step [530],
# PY [python3]. Runs from a checkout: needs torch, numpy, scipy, Pillow, safetensors and
# PyYAML only (a bare GPU image). Three runs with 4 workers each fit 16 CPU cores.
set -u
if [ $# -eq 0 ] || [[ "$1" != *=* ]]; then
  echo "usage: $0 NAME=\"OPTIONS\" [NAME=\"OPTIONS\" ...]" >&2; exit 2
fi
T0=$(date +%s)
DEV=${DEV:-cuda}; MIN=${MIN:-7.9}; POOL=${POOL:-1200}; WORKERS=${WORKERS:-4}
BATCH=${BATCH:-16}; STOP_AT=${STOP_AT:-530}; THREADS=${THREADS:-1}
OUT=${OUT:-./gpu_out}; W=${WORK:-/tmp/starnet-gpu}; PY=${PY:-python3}
mkdir -p "$OUT"; rm -rf "$W"; mkdir -p "$W"
OUT=$(realpath "$OUT"); W=$(realpath "$W")
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc
  $PY -c "import sys, torch; print(sys.version); print(torch.__version__, torch.cuda.is_available())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
RECIPE="--synthetic --crop 256 --batch $BATCH --w-over 10 --glow-cap 0.5 --group-share 0.5
 --cast-share 0.5 --large-galaxy-share 0.3 --dense-share 0.4 --bright-rate 5 --w-galaxy 10
 --w-anchor 20 --w-gan 0 --w-percep 0 --pool $POOL --workers $WORKERS --threads $THREADS
 --device $DEV --keep-every 500 --minutes $MIN"
NAMES=(); PIDS=()
for spec in "$@"; do
  name=${spec%%=*}; opts=${spec#*=}
  # shellcheck disable=SC2086  # the options are words
  $PY -m flows.cli train $RECIPE $opts --logs "$W/$name" --export "$W/$name/final.safetensors" \
    > "$W/$name.log" 2>&1 &
  NAMES+=("$name"); PIDS+=($!)
done
running() { for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
failed() {  # a run that ended without its weights
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null && [ ! -f "$W/${NAMES[$i]}/final.safetensors" ]; then
      echo "run ${NAMES[$i]} failed:"; tail -n 30 "$W/${NAMES[$i]}.log"; return 0
    fi
  done
  return 1
}
while running && ! failed >/dev/null; do
  if [ $(( $(date +%s) - T0 )) -ge "$STOP_AT" ]; then
    echo "$STOP_AT s: SIGTERM to the runs still going"; kill -TERM "${PIDS[@]}" 2>/dev/null
    STOP_AT=999999
  fi
  sleep 2
done
if failed >/dev/null; then  # one failure stops the lot: the others' device time is not spent
  failed; kill "${PIDS[@]}" 2>/dev/null; (cd "$W" && tar czf "$OUT/logs.tgz" ./*.log); exit 3
fi
for name in "${NAMES[@]}"; do
  tail -n 3 "$W/$name.log"
  [ -f "$W/$name/final.safetensors" ] || { echo "$name: no weights"; continue; }
  cp "$W/$name/final.safetensors" "$OUT/$name-final.safetensors"
  mapfile -t kept < <(find "$W/$name" -maxdepth 1 -name 'weights-*.safetensors' | sort)
  half=("${kept[@]:$(( ${#kept[@]} / 2 ))}")
  if [ ${#half[@]} -ge 1 ]; then
    $PY -m flows.cli soup "${half[@]}" "$W/$name/final.safetensors" \
      --out "$OUT/$name-avg.safetensors" >/dev/null && echo "$name-avg: ${half[*]##*/} + final"
  fi
done
mapfile -t logs < <(cd "$W" && find . -name '*.log' -o -name train_log.jsonl | sort)
(cd "$W" && tar czf "$OUT/logs.tgz" "${logs[@]}")
ls -l "$OUT"; echo "total $(( $(date +%s) - T0 )) s"
