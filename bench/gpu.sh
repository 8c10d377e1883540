#!/usr/bin/env bash
# GPU check and throughput benchmark (run on a CUDA machine from the repo root):
#  1. every algorithm trains mnist1d on the GPU (--device cuda) and reaches its accuracy;
#  2. ResNet-18 (CIFAR form) on CIFAR-shaped data (random 3x32x32 images, so accuracy is
#     meaningless: this measures throughput and MFU only) side by side through `asyncsgd bench`.
# Usage: bash bench/gpu.sh OUTDIR
set -uo pipefail
OUT=${1:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/machine.txt"
# name|flags: pdasgd-turns is the CPU default's layout on one GPU (2 processes, 1F:1B at a queue of
# 0, each on one thread with one CUDA stream: threads.Decoupled._turns_loop), untested on a GPU so far
for run in "sequential|--algo sequential" "sync|--algo sync" "hogwild|--algo hogwild" "pdasgd|--algo pdasgd" \
           "pdasgd-turns|--algo pdasgd --workers 2 --backward-threads 1" "dasgd|--algo dasgd" "lpap|--algo lpap"; do
  algo=${run%%|*}
  timeout 120 python3 -m asyncsgd train ${run#*|} --device cuda --epochs 3 --progress none \
      --out "/tmp/gpu-smoke/$algo" > "/tmp/gpu-smoke-$algo.log" 2>&1
  rc=$?
  python3 - "$algo" "$rc" <<'PY' | tee -a "$OUT/smoke.txt"
import json, sys
algo, rc = sys.argv[1], sys.argv[2]
try:
    s = json.load(open(f"/tmp/gpu-smoke/{algo}/summary.json"))
    print(f"{algo:10s} rc={rc} workers={s['workers']} acc={s['final_test_accuracy']:.4f} "
          f"samples/s={s['samples_per_s']:.0f} staleness_mean={s['staleness']['mean']} device={s['device']}")
except Exception as e:
    print(f"{algo:10s} rc={rc} no summary ({e}); log tail: " + open(f"/tmp/gpu-smoke-{algo}.log").read()[-600:])
PY
done
python3 -c "
import numpy as np
rng = np.random.default_rng(0)
np.savez('/tmp/cifar_shaped.npz', x=rng.standard_normal((20000, 3, 32, 32), dtype=np.float32),
         y=rng.integers(0, 10, 20000))"
timeout 400 python3 -m asyncsgd bench --suite quick --algos sequential,pdasgd,hogwild,sync \
    --set task=npz:/tmp/cifar_shaped.npz --set model=resnet18 --set device=cuda --set batch_size=128 \
    --set eval_points=4 --epochs 1 --out /tmp/gpu-bench > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
cp /tmp/gpu-bench/results.json /tmp/gpu-bench/report.md "$OUT/" 2>/dev/null
