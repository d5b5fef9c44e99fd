"""The assignment config: the shipped one loads; each kind of mistake is a clear ConfigError."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from grader.config import load_config, parse_override
from grader.errors import ConfigError
from grader.paths import DEFAULT_CONFIG

SHIPPED = DEFAULT_CONFIG.read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "assignment.toml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_the_assignments_questions_and_points():
    config = load_config()
    assert [q.id for q in config.questions] == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    assert [q.points for q in config.questions] == [2, 3, 3, 3, 4]
    assert [q.limit for q in config.questions] == [150, 150, 200, 200, 300]
    assert config.max_answer_points == 15
    assert set(config.parameters.spec) >= {
        "NZ", "EPOCHS", "BATCH_SIZE", "LR", "DATA_DIR", "SEED", "START_LABEL", "END_LABEL", "TRAIN_SUBSET"
    }
    assert config.parameters.defaults()["TRAIN_SUBSET"] is None


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("rtol = 1e-3", "rtl = 1e-3", r"checks\.0\.kl_unit\.rtl.*Extra inputs"),
        ('kind = "kl_unit"', 'kind = "kl_unti"', r"checks\.0.*kl_unti"),
        ("points = 2\nlimit = 150", 'points = "two"\nlimit = 150', r"questions\.0\.points"),
        ("default = 16", 'default = "sixteen"', r"parameters\.spec\.NZ"),
        ('id = "Q2"', 'id = "Q1"', r"duplicate question id\(s\): Q1"),
        ("match = \"well-tuned VAE\"", "match = \"well-(tuned\"", r"questions\.3\.match.*regular expression"),
        ("EPOCHS = 4\nTRAIN_SUBSET = 16384", "EPOCH = 4\nTRAIN_SUBSET = 16384", r"unknown parameter 'EPOCH'"),
        ("[contract]\nae = \"ae\"\n", "[contract]\n", r"contract\.ae.*Field required"),
    ],
)
def test_each_mistake_names_the_file_and_the_field(tmp_path, old, new, expected):
    assert old in SHIPPED, old
    path = write(tmp_path, SHIPPED.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(expected, message, re.S), message


def test_not_toml_and_missing_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"assignment\.toml: not valid TOML"):
        load_config(write(tmp_path, "[assignment\nname="))
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_config(tmp_path / "nope.toml")


def test_parameters_resolve_defaults_then_preset_then_overrides():
    config = load_config()
    params = config.resolve_parameters({"EPOCHS": 2, "LR": 1}, preset="quick")
    assert params["EPOCHS"] == 2 and params["TRAIN_SUBSET"] == 16384 and params["NZ"] == 16
    assert params["LR"] == 1.0 and isinstance(params["LR"], float)
    with pytest.raises(ConfigError, match="unknown parameter 'EPOHCS'"):
        config.resolve_parameters({"EPOHCS": 2})
    with pytest.raises(ConfigError, match="NZ: 1.5 is not an integer"):
        config.resolve_parameters({"NZ": 1.5})
    with pytest.raises(ConfigError, match="unknown parameter preset 'fast'"):
        config.resolve_parameters(preset="fast")
    assert config.resolve_parameters({"TRAIN_SUBSET": None})["TRAIN_SUBSET"] is None
    with pytest.raises(ConfigError, match="NZ: None is not allowed"):
        config.resolve_parameters({"NZ": None})


def test_parse_override_reads_python_literals():
    assert parse_override("EPOCHS=4") == ("EPOCHS", 4)
    assert parse_override("LR=1e-3") == ("LR", 0.001)
    assert parse_override("TRAIN_SUBSET=None") == ("TRAIN_SUBSET", None)
    assert parse_override("DATA_DIR=./data") == ("DATA_DIR", "./data")
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        parse_override("EPOCHS")
    with pytest.raises(ConfigError, match="number, a string or None"):
        parse_override("NZ=[1,2]")


def test_config_digest_changes_with_content(tmp_path):
    a = load_config(write(tmp_path, SHIPPED))
    b = load_config(write(tmp_path, SHIPPED.replace("points = 3\n", "points = 4\n", 1)))
    assert a.digest != b.digest
