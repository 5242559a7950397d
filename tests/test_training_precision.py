"""training.precision: ``auto`` resolves per device; the trainer and the step probe use the result."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from napari_connectomics.config import ConfigError, load_config
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.training import TrainingData, train
from napari_connectomics.training.precision import autocast_dtype, cpu_computes_bf16, resolve_precision
from napari_connectomics.widgets.step_probe import measure_step, probe_config


def cpu_with_bf16(monkeypatch, avx512_bf16: bool, amx: bool = False) -> None:
    """Pretend to be a CPU with or without bfloat16 instructions (what torch.cpu reports)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "32-true")])
def test_auto_on_a_cpu_is_bf16_only_where_the_cpu_computes_it(monkeypatch, avx512_bf16, amx, expected):
    cpu_with_bf16(monkeypatch, avx512_bf16, amx)
    assert cpu_computes_bf16() == (expected == "bf16-mixed")
    assert resolve_precision("auto", "cpu") == expected


def test_auto_without_cuda_never_asks_for_float16(monkeypatch):
    cpu_with_bf16(monkeypatch, False)
    for accelerator in ("cpu", "mps"):
        assert resolve_precision("auto", accelerator) == "32-true"


def test_float16_on_a_cpu_falls_back_to_32_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="napari_connectomics.training.precision"):
        assert resolve_precision("16-mixed", "cpu") == "32-true"
    assert "needs a GPU" in caplog.text
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # asked for by name: kept
    assert resolve_precision("32", "cpu") == "32"


def test_autocast_dtypes():
    assert autocast_dtype("bf16-mixed") is torch.bfloat16
    assert autocast_dtype("16-mixed") is torch.float16
    assert autocast_dtype("32-true") is None


def test_the_schema_takes_auto_and_refuses_a_misspelling():
    assert load_config(overrides=["training.precision=auto"]).training.precision == "auto"
    with pytest.raises(ConfigError, match="precision"):
        load_config(overrides=["training.precision=bf16-auto"])


class PrecisionSeen(L.Callback):
    """Records the precision Lightning trained with and the dtype of the first batch's logits."""

    def __init__(self) -> None:
        self.precision: str | None = None
        self.logits_dtype: torch.dtype | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.precision = str(trainer.precision)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.logits_dtype is None:
            with trainer.precision_plugin.forward_context():
                image = batch["image"] if isinstance(batch, dict) else batch[0]
                self.logits_dtype = pl_module(image[:1].to(pl_module.device)).dtype


@pytest.mark.parametrize("avx512_bf16", [True, False])
def test_an_auto_run_trains_in_what_auto_resolves_to(monkeypatch, tmp_path, caplog, avx512_bf16):
    cpu_with_bf16(monkeypatch, avx512_bf16)
    sample = make_synthetic_em(shape=(16, 64, 64), seed=3)
    cfg = load_config(overrides=[
        "model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[8,16,32]", "model.num_res_units=1",
        "data.patch_size=[64,64]", "data.batch_size=2", "data.samples_per_epoch=4", "training.val_patches=2",
        "training.max_steps=3", "training.precision=auto", f"training.output_dir={tmp_path / 'runs'}"])
    seen = PrecisionSeen()
    with caplog.at_level(logging.INFO, logger="napari_connectomics.training.trainer"):
        result = train(cfg, data=TrainingData(train=[(sample.image, sample.mitochondria)]), callbacks=[seen])
    assert result.global_step == 3
    expected = "bf16-mixed" if avx512_bf16 else "32-true"
    assert seen.precision == expected
    assert seen.logits_dtype == (torch.bfloat16 if avx512_bf16 else torch.float32)
    assert f"training.precision=auto: {expected} on CPU" in caplog.text
    assert "precision: auto" in (result.run_dir / "config.yaml").read_text()  # the run repeats as asked


def test_the_step_probe_times_the_precision_training_uses(monkeypatch):
    cfg = probe_config(load_config(overrides=[
        "model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[8,16,32]", "model.num_res_units=1",
        "data.patch_size=[64,64]", "data.batch_size=2", "training.precision=auto"]), accelerator="cpu")
    autocast_seen: list[bool] = []
    real_autocast = torch.autocast

    class Recording(real_autocast):  # the real context manager; only records whether it was enabled
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            autocast_seen.append(bool(kwargs.get("enabled", True)) and kwargs.get("dtype") is torch.bfloat16)

    for avx512_bf16 in (True, False):
        cpu_with_bf16(monkeypatch, avx512_bf16)
        autocast_seen.clear()
        monkeypatch.setattr(torch, "autocast", Recording)
        step = measure_step(cfg, timed_steps=1)
        monkeypatch.setattr(torch, "autocast", real_autocast)
        assert step.device == "CPU" and step.seconds > 0
        assert autocast_seen and all(seen == avx512_bf16 for seen in autocast_seen)
