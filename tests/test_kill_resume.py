"""`napari-connectomics train` killed mid-run (SIGKILL) resumes from its time-based last.ckpt, and a
full disk ends a run with one line naming the path, leaving no half-written checkpoint behind."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import run_cli
from test_training import sample, volume_file  # noqa: F401 (fixtures)

from napari_connectomics.cli import main
from napari_connectomics.training import load_checkpoint
from napari_connectomics.training.checkpoint import AtomicCheckpointIO
from napari_connectomics.training.disk import DiskFullError, human_size

CADENCE_MINUTES = 0.02  # last.ckpt every 1.2 s of training


def tiny_run(volume_file: Path, output_dir: Path, *extra: str) -> list[str]:
    """A 2D U-Net (about 30,000 weights, a 360 KB checkpoint) on one synthetic volume."""
    return [f"data.train_image={volume_file}:image", f"data.train_label={volume_file}:label",
            "model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[8,16,32]",
            "data.patch_size=[64,64]", "data.batch_size=2", "training.val_patches=2",
            f"training.output_dir={output_dir}", "system.torch_threads=1", *extra]


def check_checkpoint_folder(folder: Path) -> None:
    """Every file under a final name loads; anything else (a write cut off) is hidden and not a .ckpt."""
    for path in folder.iterdir():
        if path.suffix == ".ckpt" and not path.name.startswith("."):
            load_checkpoint(path)
        else:
            assert path.name.startswith(".") and not path.name.endswith(".ckpt"), path


def wait_for(path_glob: str, root: Path, proc: subprocess.Popen, log: Path, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        assert proc.poll() is None, f"training ended before writing {path_glob}: {log.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {path_glob} under {root} after {timeout} s")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_continues_from_the_timed_checkpoint(tmp_path, volume_file):
    runs = tmp_path / "runs"
    # One epoch is far longer than the test: only the time-based cadence can write last.ckpt before the kill.
    endless_epoch = "data.samples_per_epoch=1000000"
    killed = tiny_run(volume_file, runs, "training.name=killed", endless_epoch, "training.max_steps=1000000",
                      f"checkpoint.every_n_minutes={CADENCE_MINUTES}")
    log_path = tmp_path / "killed.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "napari_connectomics", "train", "-q", *killed],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        last = wait_for("killed/*/checkpoints/last.ckpt", runs, proc, log_path, timeout=60)
        first_step = load_checkpoint(last)["global_step"]
        # Let the cadence save again (a write may well be in flight at the kill), then kill the whole session.
        deadline = time.monotonic() + 20
        while load_checkpoint(last)["global_step"] == first_step and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(CADENCE_MINUTES * 60 * 0.7)
        assert proc.poll() is None, "the run ended before it was killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI and anything it started (its own session)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    check_checkpoint_folder(last.parent)
    ckpt = load_checkpoint(last)
    step = ckpt["global_step"]
    assert first_step < step < 1_000_000  # saved more than once, mid-epoch, with the optimizer's state
    assert ckpt["optimizer_states"] and ckpt["epoch"] == 0

    target = step + 3
    resumed = run_cli("train", "-q", *tiny_run(volume_file, runs, "training.name=resumed", endless_epoch,
                                               f"training.max_steps={target}"), "--resume", str(last), timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = {key: line[len(key):].strip() for line in resumed.stdout.splitlines()
               for key in ("steps", "last checkpoint") if line.startswith(key)}
    assert summary["steps"] == str(target)
    final = load_checkpoint(summary["last checkpoint"])
    assert final["global_step"] == target
    adam = next(iter(final["optimizer_states"][0]["state"].values()))
    assert int(adam["step"]) == target  # the optimizer went on from the killed run's state, not from 0


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB tmpfs: room for the run's config and logs, not for a checkpoint."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small file system")
    point = tmp_path / "small"
    point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(point)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {made.stderr.strip()}")
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.mark.slow
def test_full_disk_is_one_line_naming_the_path_and_leaves_no_half_checkpoint(tmp_path, volume_file, small_disk):
    out = small_disk / "runs"
    # Epoch 0 ends at step 2 with a checkpoint of about 360 KB.
    result = run_cli("train", "-q", *tiny_run(volume_file, out, "training.name=full", "data.samples_per_epoch=4",
                                              "training.max_steps=4"), timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("napari-connectomics train:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    line = errors[0]
    assert line.startswith(f"napari-connectomics train: error: no space left on {out}/full/"), line
    needed, free = map(int, re.search(r"\.ckpt \(disk full\): the checkpoint needs about (\d+) KB and (\d+) KB "
                                      r"are free; free (?:\d+) KB", line).groups())
    assert needed > 96 > free, line  # the checkpoint's exact size, more than the whole disk
    assert line.endswith("or choose another training.output_dir (or checkpoint.dirpath)"), line
    run = next((out / "full").iterdir())
    assert (run / "config.yaml").is_file()  # the run got going: the checkpoint is what did not fit
    folder = run / "checkpoints"
    if folder.exists():
        check_checkpoint_folder(folder)
        assert not any(p.name.startswith(".") for p in folder.iterdir())  # its temporary file was removed


def test_a_full_disk_during_a_checkpoint_write_names_the_file_and_its_size(tmp_path, monkeypatch):
    """Without root (no tmpfs): the same error from a save that runs out of space half-way."""
    checkpoint = {"state_dict": {"w": torch.zeros(50_000)}, "global_step": 7}
    exact = io.BytesIO()
    torch.save(checkpoint, exact)
    real_save = torch.save

    def out_of_space(obj, handle, *args, **kwargs):
        if not isinstance(handle, io.BufferedWriter):  # the size count writes to no file
            return real_save(obj, handle, *args, **kwargs)
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", out_of_space)
    path = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(DiskFullError) as info:
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    assert info.value.errno == errno.ENOSPC and info.value.needed == len(exact.getvalue())
    size = human_size(len(exact.getvalue()))  # 197 KB
    assert str(info.value).startswith(f"no space left on {path} (disk full): the checkpoint needs about {size} and ")
    assert list(path.parent.iterdir()) == []  # the temporary file is gone, nothing under the final name


def test_the_cli_reports_a_full_disk_in_one_line(monkeypatch, capsys):
    """torch wraps ENOSPC in a RuntimeError: still a user error (exit 2), not an internal one."""
    def full(args):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/pred.zarr")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr("napari_connectomics.cli.cmd_info", full)
    assert main(["info", "mednext"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["napari-connectomics info: error: no space left on /data/out/pred.zarr (disk full): "
                   "free some space or choose another output folder"]
