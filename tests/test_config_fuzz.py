"""Config fuzzing: wrong types, out-of-range numbers and unknown keys for every field of the schema,
through load_config (dotlist and YAML file) and the CLI: always one line naming the key, never a
traceback."""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys
import typing

import pytest

from napari_connectomics.config import ConfigError, load_config
from napari_connectomics.config.schema import ConnectomicsConfig


def _fields(schema: type = ConnectomicsConfig, prefix: str = "") -> list[tuple[str, dataclasses.Field, object]]:
    hints = typing.get_type_hints(schema)
    found = []
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            found += _fields(kind, f"{prefix}{f.name}.")
        else:
            found.append((f"{prefix}{f.name}", f, kind))
    return found


FIELDS = _fields()
WRONG = ["abc", "[1,2,x]", "{a: 1}", "1e999", "-1e999", "nan", "-7", "12345678901234567890", "[]", "''",
         "true", "3.5", "[[1]]"]


def _bad_values(f: dataclasses.Field) -> list[str]:
    values = list(WRONG)
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if low is not None:
        values.append(repr(low - 1))
    if high is not None:
        values.append(repr(high + 1))
    return values


def _load(key: str, value: str):
    return load_config(overrides=[f"{key}={value}"])


@pytest.mark.parametrize("key, f, kind", FIELDS, ids=[k for k, _, _ in FIELDS])
def test_every_field_refuses_wrong_values_in_one_line_naming_it(key, f, kind):
    for value in _bad_values(f):
        try:
            cfg = _load(key, value)
        except ConfigError as error:
            message = str(error)
            assert "\n" not in message and key.split(".")[-1] in message, (value, message)
            continue
        # Accepted: it must then be a valid value of the field (e.g. "3.5" for a float, "true" for a str).
        loaded = cfg
        for part in key.split("."):
            loaded = loaded[part]
        if isinstance(loaded, float):
            assert math.isfinite(loaded), (key, value, loaded)


def test_unknown_keys_in_every_section_name_the_key():
    for section in {k.split(".")[0] for k, _, _ in FIELDS}:
        with pytest.raises(ConfigError, match=f"{section}.no_such_knob"):
            _load(f"{section}.no_such_knob", "1")


def test_yaml_files_with_random_wrong_values_fail_in_one_line(tmp_path):
    rng = random.Random(0)
    for n in range(60):
        key, f, _ = rng.choice(FIELDS)
        value = rng.choice(_bad_values(f))
        section, _, name = key.rpartition(".")
        lines = []
        indent = ""
        for part in section.split("."):
            lines.append(f"{indent}{part}:")
            indent += "  "
        lines.append(f"{indent}{name}: {value}")
        path = tmp_path / f"fuzz{n}.yaml"
        path.write_text("\n".join(lines) + "\n")
        try:
            load_config(path)
        except ConfigError as error:
            assert "\n" not in str(error), (key, value, str(error))


@pytest.mark.parametrize("text", ["model:\n\tarchitecture: mednext\n", "model:\n  architecture: a\n  architecture: b\n",
                                  "model: [1, 2\n", "- just\n- a list\n", "42\n"])
def test_malformed_yaml_is_one_line(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises((ConfigError, ValueError)) as info:
        load_config(path)
    assert "\n" not in str(info.value).strip()


def test_the_cli_reports_bad_values_without_a_traceback(tmp_path):
    for key, value in [("data.batch_size", "abc"), ("optimizer.lr", "-1"), ("model.no_such", "1"),
                       ("inference.overlap", "2"), ("data.patch_size", "[1,x]")]:
        result = subprocess.run([sys.executable, "-m", "napari_connectomics", "train", f"{key}={value}"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert key.split(".")[-1] in result.stderr
