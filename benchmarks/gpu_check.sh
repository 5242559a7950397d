#!/usr/bin/env bash
# The GPU checks of this project in one run (device machine: torch there, MONAI/OmegaConf carried
# as wheels in .whl). Figures go to $OUT; docs/benchmarks.md records them with the card's name.
#   bash benchmarks/gpu_check.sh            (OUT defaults to ./gpu_out)
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)" | tee -a "$OUT/gpu.txt"

B="python3 benchmarks/bench_models.py --device cuda --patch 128,128,128 --batch 2 --steps 5 --warmup 2"
{
echo "## MedNeXt presets, deep supervision, bf16-mixed, 128^3 x 2"
$B --precision bf16-mixed --models mednext:S:3,mednext:B:3,mednext:M:3,mednext:L:3,mednext:S:5,mednext:B:5
echo "## MedNeXt-S k3 precisions"
$B --precision 32 --models mednext:S:3
$B --precision 16-mixed --models mednext:S:3
echo "## MedNeXt-M gradient checkpointing off (presets have it on)"
$B --precision bf16-mixed --mednext-checkpoint none --models mednext:M:3,mednext:L:3
echo "## MONAI networks, bf16-mixed, 128^3 x 2"
$B --precision bf16-mixed --models monai_unet,monai_basic_unet3d,monai_segresnet,monai_swin_unetr
} 2>"$OUT/bench.log" | tee "$OUT/bench.md"

# GPU forward equals CPU forward for the same weights (float32).
python3 - <<'PY' 2>&1 | tee "$OUT/equivalence.txt"
import torch
from napari_connectomics.models.architectures.mednext import create_mednext_v1
torch.manual_seed(0)
net = create_mednext_v1(1, 2, "S", 3, deep_supervision=True).eval()
x = torch.randn(1, 1, 64, 64, 64)
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
with torch.no_grad():
    cpu = net(x)
    gpu = net.cuda()(x.cuda())
print("max |gpu - cpu| per scale:", [float((g.cpu() - c).abs().max()) for g, c in zip(gpu, cpu)])
PY
