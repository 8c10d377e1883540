#!/bin/bash
# Training time of one algorithm launched by two torchrun nodes (one process each, 127.0.0.1)
# against the same run launched locally (2 processes), interleaved, REPEATS times:
#   bash bench/torchrun_vs_local.sh dasgd [REPEATS] [train flags...]
# Prints one line per repeat: torchrun and local wall_time_s (summary.json) and their ratio.
set -euo pipefail
algo=$1; repeats=${2:-2}; shift $(( $# >= 2 ? 2 : 1 ))
out=$(mktemp -d)
for rep in $(seq "$repeats"); do
  port=$((29600 + RANDOM % 1000))
  for node in 0 1; do
    python -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --node-rank $node --master-addr 127.0.0.1 \
      --master-port $port --max-restarts 0 -m asyncsgd train --algo "$algo" --progress none \
      --out "$out/tr$rep-n$node" "$@" > "$out/tr$rep-n$node.log" 2>&1 &
  done
  wait
  local_workers=(); [ "$algo" = lpap ] || local_workers=(--workers 2)
  asyncsgd train --algo "$algo" "${local_workers[@]}" --progress none --out "$out/local$rep" "$@" > /dev/null
  python - "$out/tr$rep-n0/summary.json" "$out/local$rep/summary.json" "$algo" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
print(sys.argv[3], "torchrun", a["wall_time_s"], "local", b["wall_time_s"], "ratio",
      round(a["wall_time_s"] / b["wall_time_s"], 2), "accuracy", a["final_test_accuracy"], b["final_test_accuracy"])
PY
done
