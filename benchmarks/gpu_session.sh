#!/usr/bin/env bash
# One GPU lease's checks, in two calls (each inside the device tool's 10-minute limit):
#   bash benchmarks/gpu_session.sh predict   # inference ratio + agreement, panel worker memory, 2D source model
#   bash benchmarks/gpu_session.sh recipe    # MedNeXt-S k3 deep supervision 3D bf16 on Lucchi
# Needs .whl (MONAI, OmegaConf, Zarr wheels: see the device README) and .gpu (Lucchi arrays:
# `python benchmarks/gpu_lucchi.py --pack .gpu`) carried, both listed in .git/info/exclude; figures go to $OUT and are recorded in docs/benchmarks.md. CODE (default:
# this checkout) is where src/ and benchmarks/ are read from: a frozen copy keeps a run on a shared
# working tree from picking up half-made edits.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
CODE=${CODE:-$PWD}
export PYTHONPATH=/tmp/site:$CODE/src:$CODE/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, monai, lightning; print('torch', torch.__version__, 'monai', monai.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"
case "${1:-predict}" in
predict)
    timeout 170 python3 $CODE/benchmarks/infer_overhead.py --device cuda --shape 96,1024,1024 --block 32,1024,1024 \
        --memory-limit 16384 --repeat 5 2>"$OUT/infer.log" | tee "$OUT/infer.md"
    timeout 100 python3 $CODE/benchmarks/gpu_worker_memory.py --data .gpu --steps 100 --json "$OUT/worker.json" \
        2>"$OUT/worker.log" | tee "$OUT/worker.md"
    timeout 160 python3 $CODE/benchmarks/gpu_lucchi.py --config $CODE/src/napari_connectomics/configs/interactive_cpu.yaml \
        --data .gpu --minutes 1.5 --patch 256,256 --batch 32 --precision bf16-mixed \
        --save-weights "$OUT/pretrained_2d.ckpt" --json "$OUT/pretrain_2d.json" 2>"$OUT/pretrain_2d.log" | tee "$OUT/pretrain_2d.md"
    ;;
recipe)
    timeout 330 python3 $CODE/benchmarks/gpu_lucchi.py --config $CODE/examples/configs/mednext_lucchi.yaml \
        --data .gpu --minutes 3 --precision bf16-mixed \
        --json "$OUT/mednext.json" 2>"$OUT/mednext.log" | tee "$OUT/mednext.md"
    ;;
esac
tail -c 3000 "$OUT"/*.log
