#!/usr/bin/env bash
# pdasgd on several GPUs: one shared model on one GPU (--sharing memory, every worker process
# computes there) against a replica per worker process on its own GPU (cuda:{rank % GPUs}),
# averaged in the background every --average-every backward passes (--sharing average).
# mnist1d by default; give any other train flags after the first three arguments, e.g.
#   bash bench/pdasgd_replicas.sh OUTDIR 4 10 --task cifar10 --model resnet18 --data-dir DIR --batch-size 128
# Usage: bash bench/pdasgd_replicas.sh OUTDIR [WORKERS (default: the visible GPUs)] [EPOCHS (default 10)] [FLAGS...]
# DEVICE=cpu runs the same comparison on the CPU (a dry run of the script; replicas average over gloo).
set -uo pipefail
OUT=${1:-pdasgd-replicas}
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then GPUS=$(nvidia-smi -L | wc -l); else GPUS=0; fi
N=${2:-$GPUS}
EPOCHS=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
[ "$N" -ge 2 ] || N=2
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'GPUs visible:', torch.cuda.device_count())"
  echo "workers=$N epochs=$EPOCHS device=$DEVICE extra: $*"; } | tee "$OUT/machine.txt"
run() {  # name, then train flags
  local name=$1; shift
  timeout 1200 python3 -m asyncsgd train --algo pdasgd --device "$DEVICE" --workers "$N" --epochs "$EPOCHS" \
      --progress none --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  python3 - "$OUT/$name" "$name" "$?" <<'PY' | tee -a "$OUT/results.txt"
import json, sys
run, name, rc = sys.argv[1:]
try:
    s = json.load(open(f"{run}/summary.json"))
except Exception as e:
    sys.exit(print(f"{name:16s} rc={rc} no summary ({e}); see {run}.log"))
avg = s.get("averaging") or {}
print(f"{name:16s} rc={rc} sharing={s['sharing']} acc={s['final_test_accuracy']:.4f} "
      f"samples/s={s['samples_per_s']:.0f} wall={s['wall_time_s']:.1f}s staleness_mean={s['staleness']['mean']} "
      f"rounds={avg.get('rounds_per_worker')} consensus={s.get('consensus_distance')} "
      f"MB_sent={s['bytes_sent'] / 1e6:.1f} devices={avg.get('devices')} gpu={s['device']}")
PY
}
run memory --sharing memory "$@"
run average-10 --sharing average --average-every 10 "$@"
run average-50 --sharing average --average-every 50 "$@"
