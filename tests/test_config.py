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
        ('role = "ae"\nkind = "ae"\nvariable = "ae"\n', 'role = "ae"\nkind = "ae"\n', r"models\.0\.variable.*Field required"),
        # the models, their roles and the parameters' roles are checked against each other
        ('role = "vae_beta10"', 'role = "vae_beta0"', r"duplicate role\(s\): vae_beta0"),
        ('kind = "ae"\nvariable = "ae"', 'kind = "ae"\nbeta = 1.0\nvariable = "ae"', r"an autoencoder has no beta"),
        ('beta = 10.0', 'beta = "tuned"', r"at most one model has beta = \"tuned\""),
        ('beta = 0.0', 'beta = -1.0', r"beta must be a finite number >= 0"),
        ('model = "vae_beta10"\ntitle', 'model = "ae"\ntitle',
         r"check vae_beta10_behaviour names the role 'ae', a model of kind ae; it measures a vae"),
        ('model = "vae_tuned"\ntitle = "Tuned VAE sample', 'model = "vae_tunde"\ntitle = "Tuned VAE sample',
         r"check vae_tuned_samples names the role 'vae_tunde', which is not a model"),
        ('metrics = ["ae.mse"', 'metrics = ["autoencoder.mse"', r"question Q1: evidence metric 'autoencoder.mse'"),
        ('latent_size = "NZ"', 'latent_size = "NZZ"', r"roles\.latent_size names 'NZZ', which is not a parameter"),
        ('[assessable]\nmodel = "ae"', '[assessable]\nmodel = "aa"',
         r"assessable\.model names the role 'aa', which is not a model"),
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


def test_the_models_roles_betas_and_parameter_roles_are_data():
    config = load_config()
    assert config.model_names() == {"ae": "ae", "vae_beta0": "vae_beta0", "vae_beta10": "vae_beta10",
                                    "vae_tuned": "vae_tuned"}
    assert [m.kind for m in config.models] == ["ae", "vae", "vae", "vae"]
    assert config.fixed_betas() == {"vae_beta0": 0.0, "vae_beta10": 10.0}
    assert config.tuned_model.role == "vae_tuned" and config.tuned_model.label == "Tuned VAE"
    assert config.labels()["vae_beta0"] == "VAE, β = 0"
    assert config.parameters.roles.training() == {
        "latent_size": "NZ", "epochs": "EPOCHS", "batch_size": "BATCH_SIZE", "learning_rate": "LR",
        "seed": "SEED", "train_subset": "TRAIN_SUBSET"}
    assert config.parameters.data_dir == "DATA_DIR"
    assert config.latent_size(config.resolve_parameters({"NZ": 5})) == 5
    # the architecture is the solution notebook's own classes
    assert (config.architecture.ae, config.architecture.vae) == ("solution.ipynb:AutoEncoder", "solution.ipynb:VAE")
    assert [config.model_class(kind).__name__ for kind in ("ae", "vae")] == ["AutoEncoder", "VAE"]
    assert config.model_class("vae") is config.model_class("vae")   # loaded once per process


def test_an_architecture_can_come_from_a_notebook_beside_the_config(tmp_path):
    """'solution.ipynb:VAE': the class and the definitions it needs, run from the notebook's cells."""
    import shutil

    from grader.config import architecture_source

    shutil.copy(DEFAULT_CONFIG.parent / "solution.ipynb", tmp_path / "solution.ipynb")
    config = load_config(write(tmp_path, SHIPPED))
    cls = config.model_class("vae")
    assert cls.__name__ == "VAE" and cls.__module__.startswith("grader_architecture_")
    assert cls is not load_config().model_class("vae")   # another notebook, another class
    shapes = {name: list(t.shape) for name, t in cls(4).state_dict().items()}
    assert shapes["encoder.1.weight"] == [512, 784] and shapes["encoder.5.weight"] == [8, 256]  # 2 x nz out
    assert shapes["decoder.0.weight"] == [256, 4]
    source = architecture_source(config.architecture.vae, config.base_dir)
    assert "class VAE(AutoEncoder)" in source and "def _mlp" in source and "def train(" not in source
    with pytest.raises(ConfigError, match="defines no class Nope"):
        architecture_source("solution.ipynb:Nope", tmp_path)
