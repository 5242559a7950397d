"""`napari-connectomics predict --resume` after a `kill -9`, and a disk that fills up.

The real CLI runs in a subprocess that is killed (SIGKILL) once its manifest lists some blocks but
not all; `--resume` must skip those blocks and produce an output equal, bit for bit, to an
uninterrupted run's. A partial output made with another checkpoint or other options is refused in
one line (and kept). A full disk (a small tmpfs, as root) ends the run with one line naming the
output and the space it needs, nothing left on the disk, the input untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import CLI_ENV, cli_command, tiny_checkpoint
from napari_connectomics import cli
from napari_connectomics.inference.resume import MANIFEST

SHAPE = (32, 96, 96)  # the tiny network's window is 16x64x64
ENGINES = {  # the CLI options of each engine, and how many blocks it plans
    "slabs": (["--block", "4,96,96"], 8),  # overlap-add over z-slabs (the single-process default)
    "blocks": (["--block", "16,48,48", "--memory-limit", "1"], 8),  # independent blocks
}
COMMON = ["--overlap", "0.5", "--output-dtype", "float32"]
# Sums run in the same order only with the same number of torch threads: the killed runs
# (subprocesses) and the runs in this process (whose count other tests change) use one.
THREADS = 1
ENV = {**CLI_ENV, "OMP_NUM_THREADS": str(THREADS)}


@pytest.fixture(scope="module", autouse=True)
def same_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, checkpoint, input spec) shared by the module."""
    folder = tmp_path_factory.mktemp("resume")
    checkpoint = tiny_checkpoint(folder / "tiny.ckpt")
    raw = (np.random.default_rng(5).random(SHAPE) * 255).astype(np.uint8)
    np.save(folder / "raw.npy", raw)
    return folder, checkpoint, str(folder / "raw.npy")


def predict_args(setup, out: Path, engine: str = "slabs", *extra: str) -> list[str]:
    _, checkpoint, raw = setup
    return ["predict", "--checkpoint", str(checkpoint), "--input", raw, "--output", str(out),
            *ENGINES[engine][0], *COMMON, *extra]


def partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*"))


def manifest(partial: Path) -> dict:
    return json.loads((partial / MANIFEST).read_text())


def interrupt(args: list[str], out: Path, timeout: float = 240) -> tuple[Path, list[int], int]:
    """Start `napari-connectomics ARGS`, SIGKILL it once its manifest lists some blocks but not
    all: (its partial store, the blocks listed just before the kill, the number of blocks)."""
    process = subprocess.Popen(cli_command("-q", *args), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            found = partials(out)
            if found and (found[0] / MANIFEST).exists():
                state = manifest(found[0])
                if state["done"]:
                    process.send_signal(signal.SIGKILL)
                    process.wait(30)
                    assert 0 < len(state["done"]) < state["blocks"], state
                    return found[0], state["done"], state["blocks"]
            if process.poll() is not None:
                pytest.fail(f"predict ended ({process.returncode}) before it could be killed: "
                            f"{process.stderr.read()[-2000:]}")
            time.sleep(0.005)
        pytest.fail("no block was recorded in time")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        process.stderr.close()


def reference(setup, engine: str) -> np.ndarray:
    """The probabilities of an uninterrupted run (the same CLI, in this process; cached)."""
    folder = setup[0]
    out = folder / f"reference-{engine}.zarr"
    if not out.exists():
        assert cli.main(["-q", *predict_args(setup, out, engine)]) == 0
    return zarr.open_array(str(out), path="probabilities", mode="r")[...]


@pytest.fixture(scope="module")
def killed(setup):
    """A pristine copy of the partial store a killed slab run left: (copy, manifest)."""
    folder = setup[0]
    out = folder / "killed" / "pred.zarr"
    out.parent.mkdir()
    partial, _, _ = interrupt(predict_args(setup, out), out)
    return partial, manifest(partial)


def place(killed, out: Path) -> Path:
    """A copy of the killed run's partial store beside ``out`` (as that run would have left it)."""
    source, _ = killed
    target = out.parent / f".{out.name}.partial-{source.name.rsplit('-', 1)[1]}"
    shutil.copytree(source, target)
    return target


def chunk_times(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns
            for p in (store / "probabilities" / "c").rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------
# kill -9, then --resume
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess killed mid-run, then resumed (about 15 s on two busy cores)
@pytest.mark.parametrize("engine", ["blocks", "slabs"])
def test_killed_run_resumes_to_the_same_output(setup, tmp_path, caplog, engine):
    out = tmp_path / "pred.zarr"
    partial, done, blocks = interrupt(predict_args(setup, out, engine), out)
    assert blocks == ENGINES[engine][1]
    assert not out.exists()  # nothing under the final name
    before = chunk_times(partial)
    caplog.set_level(logging.INFO, logger="napari_connectomics")
    assert cli.main(predict_args(setup, out, engine, "--resume")) == 0
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming")]
    assert len(resumed) == 1, caplog.text
    skipped = int(resumed[0].split(": ")[1].split(" of ")[0])
    assert skipped >= len(done) and f" of {blocks} blocks done" in resumed[0]
    assert partials(out) == [] and not (out / MANIFEST).exists()
    stored = zarr.open_array(str(out), path="probabilities", mode="r")[...]
    assert np.array_equal(stored, reference(setup, engine))  # bit for bit
    if engine == "blocks":  # one chunk per block and channel (z, y, x = 2, 2, 2 blocks)
        after = chunk_times(out)
        for index in done:
            z, y, x = np.unravel_index(index, (2, 2, 2))
            for channel in (0, 1):
                key = os.path.join("probabilities", "c", str(channel), str(z), str(y), str(x))
                assert after[key] == before[key], f"block {index} was written again"


@pytest.mark.slow
@pytest.mark.parametrize("change, named", [("checkpoint", "checkpoint"), ("--overlap", "overlap")])
def test_resume_refuses_a_partial_output_made_differently(setup, killed, tmp_path, capsys, change,
                                                          named):
    out = tmp_path / "pred.zarr"
    partial = place(killed, out)
    before = (partial / MANIFEST).read_bytes()
    args = predict_args(setup, out, "slabs", "--resume")
    if change == "checkpoint":  # the same weights under another name: not provably the same model
        other = tmp_path / "other.ckpt"
        shutil.copy2(setup[1], other)
        args[args.index("--checkpoint") + 1] = str(other)
    else:
        args[args.index("--overlap") + 1] = "0.25"
    assert cli.main(["-q", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("napari-connectomics predict: error: cannot resume")
    assert f"a different {named}" in lines[0] and "drop --resume to start over" in lines[0]
    assert partials(out) == [partial] and (partial / MANIFEST).read_bytes() == before  # kept
    assert not out.exists()


@pytest.mark.slow
def test_without_resume_a_stale_partial_output_is_replaced(setup, killed, tmp_path, caplog):
    out = tmp_path / "pred.zarr"
    place(killed, out)
    caplog.set_level(logging.INFO, logger="napari_connectomics")
    assert cli.main(predict_args(setup, out)) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unfinished output of an earlier run" in m and "--resume" in m for m in warned)
    assert partials(out) == [] and out.exists()
    stored = zarr.open_array(str(out), path="probabilities", mode="r")[...]
    assert np.array_equal(stored, reference(setup, "slabs"))


@pytest.mark.slow
def test_resume_takes_over_a_partial_output_named_with_this_process_id(setup, killed, tmp_path,
                                                                       caplog):
    """In a container every run may get the same process id: the partial store then has this
    process's name, and is still an earlier run's."""
    out = tmp_path / "pred.zarr"
    placed = place(killed, out)
    own = placed.with_name(f".{out.name}.partial-{os.getpid()}")
    placed.rename(own)
    caplog.set_level(logging.INFO, logger="napari_connectomics")
    assert cli.main(predict_args(setup, out, "slabs", "--resume")) == 0
    done = len(killed[1]["done"])
    assert f"resuming {own.name}: {done} of 8 blocks done" in caplog.text
    stored = zarr.open_array(str(out), path="probabilities", mode="r")[...]
    assert np.array_equal(stored, reference(setup, "slabs")) and partials(out) == []


def test_resume_with_nothing_to_resume_starts_from_scratch(setup, tmp_path, caplog):
    out = tmp_path / "pred.zarr"
    caplog.set_level(logging.INFO, logger="napari_connectomics")
    assert cli.main(predict_args(setup, out, "slabs", "--resume")) == 0
    assert "nothing to resume" in caplog.text and "starting from scratch" in caplog.text
    assert out.exists() and partials(out) == [] and not (out / MANIFEST).exists()


def test_resume_refuses_hdf5_outputs(setup, tmp_path, capsys):
    out = tmp_path / "pred.h5"
    assert cli.main(["-q", *predict_args(setup, out, "slabs", "--resume")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--resume needs a Zarr output" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# z-slabs resumed in the middle: the same pieces, bit for bit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, window, overlap, thickness", [
    ((30, 40, 36), (8, 16, 16), 0.5, 4),     # windows reach two slabs ahead
    ((26, 32, 32), (16, 16, 16), 0.25, 3),   # ... five slabs ahead, odd sizes
    ((20, 24, 24), (4, 16, 16), 0.0, 8),     # no overlap in z: nothing to replay
    ((10, 20, 20), (16, 16, 16), 0.5, 2),    # z padded up to the window: one slab
])
def test_slabs_resumed_at_any_slab_equal_an_uninterrupted_run(shape, window, overlap, thickness):
    import torch

    from napari_connectomics.inference.windows import make_grid, plan_blocks, stitch_regions

    grid = make_grid(shape, window, overlap)
    slabs = [block.core[0] for block in plan_blocks(grid, (thickness, *grid.padded[1:]))]
    image = np.random.default_rng(1).random((1, *shape)).astype(np.float32)
    importance = torch.from_numpy(np.random.default_rng(2).random(grid.window).astype(np.float32)
                                  + 0.5)

    def predict_batch(windows):  # any network: two channels, nonlinear
        return torch.cat([torch.sigmoid(windows * 3 - 1), windows.sin()], dim=1)

    def run(first):
        out = np.full((2, *grid.padded), np.nan, np.float32)
        ends = []  # planes written when each slab ended
        for piece in stitch_regions(grid, slabs, lambda r: image[(slice(None), *r)],
                                    predict_batch, importance, batch_size=3, cuts=([8, 16], [8]),
                                    first=first, prefetch=False):
            if piece.mean is None:
                ends.append(int(np.argmax(np.isnan(out[0, :, 0, 0]))) if np.isnan(out).any()
                            else grid.padded[0])
                continue
            region = (slice(None), *(slice(lo, hi) for lo, hi in piece.box))
            assert np.isnan(out[region]).all()  # every piece once
            out[region] = piece.mean.numpy()
        return out, ends

    full, ends = run(0)
    assert not np.isnan(full).any() and len(ends) == len(slabs)
    for first in range(1, len(slabs) + 1):
        resumed, _ = run(first)
        written = ends[first - 1]
        assert np.isnan(resumed[:, :written]).all()  # what the first slabs wrote is not again
        assert np.array_equal(resumed[:, written:], full[:, written:])  # the rest: bit for bit


# --------------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tmpfs of its own; the size is set by the test (``mount(size)``)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs)")
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_output_larger_than_the_free_space_is_refused_before_predicting(setup, small_disk, capsys):
    disk = small_disk("1m")  # the output needs 2 x 32 x 96 x 96 float32 = 2.2 MiB
    out = disk / "pred.zarr"
    before = digest(setup[2])
    assert cli.main(["-q", *predict_args(setup, out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"napari-connectomics predict: error: not enough space for {out}")
    assert "needs up to 2.2 MiB" in lines[0] and "1.0 MiB is free" in lines[0]
    assert list(disk.iterdir()) == []
    assert digest(setup[2]) == before


@pytest.mark.slow  # a subprocess whose disk is filled up under it
def test_disk_full_during_predict_is_one_line(setup, small_disk, tmp_path):
    disk = small_disk("3m")  # enough for the check before predicting, then filled up
    out = disk / "pred.zarr"
    before = digest(setup[2])
    process = subprocess.Popen(cli_command("-q", *predict_args(setup, out)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            found = partials(out)
            if found and (found[0] / MANIFEST).exists() and manifest(found[0])["done"]:
                break
            time.sleep(0.005)
        with open(disk / "filler", "wb") as filler:  # everything that is left
            try:
                filler.write(b"\0" * shutil.disk_usage(disk).free)
            except OSError:
                pass
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    lines = stderr.strip().splitlines()
    assert process.returncode == 2, stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0] == (f"napari-connectomics predict: error: {out}: No space left on device "
                        "(disk full); the output needs up to 2.2 MiB before compression; free "
                        "some space or write elsewhere (the unfinished output was removed)")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no output, no partial store
    assert digest(setup[2]) == before
