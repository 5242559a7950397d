"""Prediction from a checkpoint imports no Lightning: only training needs it.

Each step runs in a fresh interpreter, so modules imported by other tests cannot hide an import.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SAVE = """
import torch
from napari_connectomics.config import load_config
from napari_connectomics.models import build_model
from napari_connectomics.models.checkpoint import CONFIG_KEY, atomic_torch_save, config_container

cfg = load_config(overrides=["model.architecture=monai_unet", "model.filters=[4,8]",
                             "model.num_res_units=1", "model.spatial_dims=3",
                             "data.patch_size=[8,32,32]"])
torch.manual_seed(0)
model = build_model(cfg)
state = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
         CONFIG_KEY: config_container(cfg)}
atomic_torch_save(state, PATH)
"""

PREDICT = """
import sys
import numpy as np
from napari_connectomics.inference import predict as engine

volume = np.random.default_rng(0).integers(0, 255, (8, 40, 40), dtype=np.uint8)
result = engine.predict(PATH, volume, engine.PredictOptions(device="cpu"))
assert result.probabilities.shape == (2, 8, 40, 40), result.probabilities.shape
loaded = sorted(name for name in sys.modules
                if name == "lightning" or name.startswith("lightning."))
assert not loaded, loaded
assert "pytorch_lightning" not in sys.modules
print("ok")
"""


def run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_predict_from_a_checkpoint_imports_no_lightning(tmp_path: Path) -> None:
    path = str(tmp_path / "tiny.ckpt")
    saved = run_fresh(SAVE.replace("PATH", repr(path)))
    assert saved.returncode == 0, saved.stderr
    predicted = run_fresh(PREDICT.replace("PATH", repr(path)))
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.strip().endswith("ok")
