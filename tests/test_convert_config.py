"""`napari-connectomics convert-config`: a PyTorch Connectomics v1 (YACS) config becomes ours.

The fixtures are written here (PyTC's key names with the typical values of its Lucchi
mitochondria config), not copied from PyTC.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from napari_connectomics.config import load_config
from napari_connectomics.config.legacy import LEGACY_KEYS, Map, convert_legacy_config
from napari_connectomics.config.schema import ConnectomicsConfig

BASE = """\
# a Lucchi-like base config (PyTC v1 key names)
SYSTEM:
  NUM_GPUS: 4
  NUM_CPUS: 4
MODEL:
  ARCHITECTURE: unet_3d
  BLOCK_TYPE: residual_se
  INPUT_SIZE: [112, 112, 112]
  OUTPUT_SIZE: [112, 112, 112]
  IN_PLANES: 1
  OUT_PLANES: 1
  NORM_MODE: sync_bn
  FILTERS: [32, 64, 96, 128, 160]
DATASET:
  INPUT_PATH: {input_path}
  OUTPUT_PATH: outputs/Lucchi_base/
  PAD_SIZE: [56, 56, 56]
  REJECT_SAMPLING:
    SIZE_THRES: 1000
    P: 0.95
SOLVER:
  NAME: SGD
  LR_SCHEDULER_NAME: WarmupMultiStepLR
  BASE_LR: 0.04
  WEIGHT_DECAY: 1e-04
  ITERATION_STEP: 1
  ITERATION_SAVE: 5000
  ITERATION_TOTAL: 50000
  SAMPLES_PER_BATCH: 4
  STEPS: (40000, 45000)
INFERENCE:
  INPUT_SIZE: [112, 112, 112]
  OUTPUT_SIZE: [112, 112, 112]
  PAD_SIZE: [56, 56, 56]
  AUG_MODE: mean
  AUG_NUM: 4
  STRIDE: [56, 56, 56]
  SAMPLES_PER_BATCH: 16
"""

LUCCHI = """\
_BASE_: base.yaml
MODEL:
  LOSS_OPTION: [['WeightedBCE', 'DiceLoss']]
  LOSS_WEIGHT: [[1.0, 1.0]]
  TARGET_OPT: ['0']
  WEIGHT_OPT: [['1', '0']]
  MY_SETTING: 3
DATASET:
  IMAGE_NAME: {image}
  LABEL_NAME: {label}
  OUTPUT_PATH: outputs/Lucchi_mito_baseline
AUGMENTOR:
  FLIP:
    ENABLED: True
    DO_ZTRANS: 1
  ELASTIC:
    ENABLED: False
  CUTBLUR:
    ENABLED: True
SOLVER:
  BASE_LR: 1e-03
  BASE_LRR: 0.1
INFERENCE:
  IMAGE_NAME: img/test_im.tif
  OUTPUT_PATH: outputs/Lucchi_mito_baseline/test
  OUTPUT_NAME: result.h5
EXTRA:
  FOO: 1
"""

EXPECTED_UNMAPPED = {
    "MODEL.BLOCK_TYPE", "MODEL.OUTPUT_SIZE", "MODEL.WEIGHT_OPT", "MODEL.MY_SETTING", "DATASET.PAD_SIZE",
    "DATASET.REJECT_SAMPLING.P", "SOLVER.ITERATION_SAVE", "SOLVER.BASE_LRR", "INFERENCE.OUTPUT_SIZE",
    "INFERENCE.PAD_SIZE", "INFERENCE.IMAGE_NAME", "INFERENCE.OUTPUT_PATH", "INFERENCE.OUTPUT_NAME",
    "AUGMENTOR.FLIP.DO_ZTRANS", "AUGMENTOR.CUTBLUR.ENABLED", "EXTRA.FOO",
}


def write_legacy(folder: Path, input_path: str = "datasets/Lucchi/", image: str = "img/train_im.tif",
                 label: str = "label/train_label.tif") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(BASE.format(input_path=input_path))
    legacy = folder / "lucchi.yaml"
    legacy.write_text(LUCCHI.format(image=image, label=label))
    return legacy


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_connectomics", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def listed_keys(lines: list[str]) -> set[str]:
    """The keys of the 'not converted' list (``  KEY = value: reason``)."""
    start = next(i for i, line in enumerate(lines) if line.startswith("not converted"))
    keys = set()
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        keys.add(line.split(" = ", 1)[0].strip())
    return keys


def test_lucchi_like_config_converts_and_lists_every_key_it_cannot_map(tmp_path):
    legacy = write_legacy(tmp_path / "pytc")
    new = tmp_path / "ours" / "lucchi.yaml"
    result = run("convert-config", str(legacy), "-o", str(new))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "Traceback" not in result.stderr

    # the same list on stderr and as comments at the top of the file
    text = new.read_text()
    header = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    assert listed_keys(result.stderr.splitlines()) == EXPECTED_UNMAPPED
    assert listed_keys(header) == EXPECTED_UNMAPPED

    # every legacy key (base merged, _BASE_ itself aside) is mapped or listed, never both
    conversion = convert_legacy_config(legacy)
    assert set(conversion.unmapped) == EXPECTED_UNMAPPED
    assert not set(conversion.mapped) & set(conversion.unmapped)
    assert set(conversion.mapped) | set(conversion.unmapped) == set(conversion.legacy)
    assert len(conversion.legacy) == 47 and "_BASE_" not in conversion.legacy
    assert "did you mean SOLVER.BASE_LR?" in conversion.unmapped["SOLVER.BASE_LRR"]
    assert "no counterpart" in conversion.unmapped["AUGMENTOR.CUTBLUR.ENABLED"]

    cfg = load_config(new)
    assert cfg.model.architecture == "monai_unet" and cfg.model.spatial_dims == 3
    assert list(cfg.model.filters) == [32, 64, 96, 128, 160] and cfg.model.norm == "batch"
    assert list(cfg.model.loss_functions) == ["BCEWithLogitsLoss", "DiceLoss"]
    assert list(cfg.model.loss_weights) == [1.0, 1.0]
    assert cfg.model.out_channels == 1 and cfg.data.target == "binary"
    assert cfg.data.train_image == "datasets/Lucchi/img/train_im.tif"
    assert cfg.data.train_label == "datasets/Lucchi/label/train_label.tif"
    assert list(cfg.data.patch_size) == [112, 112, 112] and cfg.data.batch_size == 4
    assert cfg.data.foreground_sampling == "rejection"
    assert cfg.data.augmentation.flip == 0.5 and cfg.data.augmentation.elastic == 0.0
    assert cfg.optimizer.name == "SGD" and cfg.optimizer.lr == pytest.approx(1e-3)  # the file overrides its base
    assert cfg.optimizer.weight_decay == pytest.approx(1e-4)
    assert cfg.scheduler.name == "step" and cfg.scheduler.warmup_steps == 1000 and cfg.scheduler.step_size == 39000
    assert cfg.training.max_steps == 50000
    assert (cfg.training.output_dir, cfg.training.name) == ("outputs", "Lucchi_mito_baseline")
    assert list(cfg.inference.window_size) == [112, 112, 112] and cfg.inference.overlap == 0.5
    assert cfg.inference.tta is True and cfg.inference.batch_size == 16
    # approximations are said, not hidden
    assert "monai_unet" in result.stderr and "approximated" in result.stderr
    assert [key for key in conversion.notes] == ["MODEL.ARCHITECTURE", "MODEL.NORM_MODE", "SOLVER.STEPS",
                                                 "AUGMENTOR.FLIP.ENABLED"]


def test_converted_config_trains(tmp_path):
    from napari_connectomics.data.synthetic import make_synthetic_em

    data = tmp_path / "Lucchi"
    sample = make_synthetic_em(shape=(16, 64, 64), seed=0)
    (data / "img").mkdir(parents=True)
    (data / "label").mkdir()
    with h5py.File(data / "img" / "train_im.h5", "w") as file:  # one array per file, as PyTC reads them
        file["main"] = sample.image
    with h5py.File(data / "label" / "train_label.h5", "w") as file:
        file["main"] = sample.mitochondria
    legacy = write_legacy(tmp_path / "pytc", input_path=f"{data}/", image="img/train_im.h5",
                          label="label/train_label.h5")
    new = tmp_path / "new.yaml"
    assert run("convert-config", str(legacy), "-o", str(new)).returncode == 0

    small = ["model.filters=[4,8]", "data.patch_size=[8,16,16]", "inference.window_size=[8,16,16]",
             "data.batch_size=1", "data.samples_per_epoch=2", "training.val_patches=1", "training.max_steps=2",
             "system.num_gpus=0", "system.accelerator=cpu", "data.num_workers=0",
             f"training.output_dir={tmp_path / 'runs'}"]
    result = run("train", "--config", str(new), *small, "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "last checkpoint" in result.stdout
    assert list((tmp_path / "runs" / "Lucchi_mito_baseline").rglob("last.ckpt"))  # name from DATASET.OUTPUT_PATH


def _not_pytc(folder: Path) -> list[str]:
    (folder / "ours.yaml").write_text("model:\n  architecture: mednext\n")
    return [str(folder / "ours.yaml")]


CASES = {
    "missing file": (lambda f: [str(f / "nope.yaml")], "does not exist"),
    "not YAML": (lambda f: [_write(f / "bad.yaml", "MODEL: [1,\n")], "not valid YAML at line 2"),
    "a list": (lambda f: [_write(f / "list.yaml", "- 1\n- 2\n")], "not a PyTorch Connectomics config"),
    "no PyTC section": (lambda f: [_write(f / "other.yaml", "TRAIN:\n  LR: 1\n")],
                        "none of the sections MODEL, DATASET, SOLVER"),
    "our own config": (_not_pytc, "looks like a napari-connectomics config already"),
    "_BASE_ cycle": (lambda f: [_write(f / "b.yaml", "_BASE_: a.yaml\nMODEL: {}\n"),
                                _write(f / "a.yaml", "_BASE_: b.yaml\nSOLVER: {}\n")][1:],
                     "_BASE_ cycle: a.yaml -> b.yaml -> a.yaml"),
    "missing _BASE_": (lambda f: [_write(f / "c.yaml", "_BASE_: gone.yaml\nMODEL: {}\n")],
                       "(the _BASE_ of"),
}


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", list(CASES))
def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path, case):
    make, expected = CASES[case]
    args = make(tmp_path)
    before = sorted(tmp_path.iterdir())
    result = run("convert-config", *args, "-o", str(tmp_path / "new.yaml"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("napari-connectomics convert-config: error: ") and expected in lines[0], lines[0]
    assert sorted(tmp_path.iterdir()) == before  # no output, no temporary file


def test_existing_output_needs_force(tmp_path):
    legacy = write_legacy(tmp_path)
    new = tmp_path / "new.yaml"
    new.write_text("precious\n")
    before = sorted(tmp_path.iterdir())
    result = run("convert-config", str(legacy), "-o", str(new))
    assert result.returncode == 2
    assert result.stderr.strip() == f"napari-connectomics convert-config: error: {new} already exists; " \
                                    "pass --force to replace it"
    assert new.read_text() == "precious\n" and sorted(tmp_path.iterdir()) == before
    forced = run("convert-config", str(legacy), "-o", str(new), "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_config(new).model.architecture == "monai_unet"
    assert sorted(tmp_path.iterdir()) == before  # replaced in place, no temporary file left


def test_the_table_names_only_our_keys():
    import dataclasses

    from napari_connectomics.config.validation import field_types

    def exists(key: str) -> bool:
        schema: object = ConnectomicsConfig
        for part in key.split("."):
            if not dataclasses.is_dataclass(schema) or part not in field_types(schema):
                return False
            schema = field_types(schema)[part]
        return True

    ours = {key for rule in LEGACY_KEYS.values() if isinstance(rule, Map) for key in rule.keys}
    assert ours and all(exists(key) for key in ours), sorted(k for k in ours if not exists(k))
    assert all(rule.strip() for rule in LEGACY_KEYS.values() if isinstance(rule, str))


def test_approximations_of_a_mitoem_like_config(tmp_path):
    """Mask + contour becomes the instance target; odd PyTC sizes are rounded for the network; what
    cannot be read (tiled JSON volumes) is listed; old boolean augmentor switches convert."""
    legacy = tmp_path / "mitoem.yaml"
    legacy.write_text("""\
MODEL:
  ARCHITECTURE: unet_plus_3d
  INPUT_SIZE: [17, 225, 225]
  OUT_PLANES: 2
  TARGET_OPT: ['0', '4-2-1']
  LOSS_OPTION: [['WeightedBCE', 'DiceLoss'], ['WeightedBCE', 'DiceLoss']]
  LOSS_WEIGHT: [[1.0, 0.5], [1.0, 0.5]]
DATASET:
  IMAGE_NAME: im_train.json
  LABEL_NAME: a.h5@b.h5
  INPUT_PATH: /data/
AUGMENTOR:
  ROTATE: True
  RESCALE: False
SOLVER:
  LR_SCHEDULER_NAME: WarmupCosineLR
  ITERATION_STEP: 2
  ITERATION_TOTAL: 1001
INFERENCE:
  AUG_MODE: min
""")
    conversion = convert_legacy_config(legacy)
    values = conversion.values
    assert values["data.target"] == "instance" and values["model.out_channels"] == 3
    assert values["data.patch_size"] == [16, 224, 224]
    assert values["model.loss_functions"] == ["BCEWithLogitsLoss", "DiceLoss"]
    assert values["model.loss_weights"] == [2.0, 1.0]
    assert values["data.train_label"] == "/data/a.h5"
    assert values["data.augmentation.rotate90"] == 1.0 and values["data.augmentation.affine"] == 0.0
    assert values["scheduler.name"] == "cosine" and values["scheduler.warmup_steps"] == 1000
    assert values["training.max_steps"] == 501 and values["training.accumulate_grad_batches"] == 2
    assert set(conversion.unmapped) == {"DATASET.IMAGE_NAME", "INFERENCE.AUG_MODE"}
    assert "JSON" in conversion.unmapped["DATASET.IMAGE_NAME"]
    assert "rounded to [16, 224, 224]" in conversion.notes["MODEL.INPUT_SIZE"][0]
    text = conversion.to_yaml()
    assert yaml.safe_load(text)["data"]["target"] == "instance"
    load_config(overrides=conversion.nested())


def test_base_option_is_the_same_as_base_key(tmp_path):
    """PyTC's --config-base (here --base) merges like a _BASE_ line in the file."""
    legacy = write_legacy(tmp_path)
    without = tmp_path / "child.yaml"
    without.write_text(legacy.read_text().replace("_BASE_: base.yaml\n", ""))
    with_key = convert_legacy_config(legacy)
    with_option = convert_legacy_config(without, base=tmp_path / "base.yaml")
    assert with_option.values == with_key.values and with_option.unmapped == with_key.unmapped
