"""Grid building and config checking: each bad input is refused with its exact message."""

from __future__ import annotations

import re

import pytest

from decoupled.experiments.config import (
    ConfigError,
    available_presets,
    load_sweep_config,
    merge,
    parse_override,
    read_preset,
    sweep_config_from_dict,
    SweepConfig,
)
from decoupled.experiments.sweep import plan_tasks


def test_presets_are_shipped_and_valid():
    assert {"default", "smoke", "paper"} <= set(available_presets())
    for name in available_presets():
        config = load_sweep_config(name)
        assert config.name == name
        assert [g.optimizer for g in config.grids]


def test_default_sweep_has_four_optimizers_and_at_least_two_seeds():
    config = load_sweep_config("default")
    assert sorted(g.optimizer for g in config.grids) == ["adam", "adamw", "sgd", "sgdw"]
    assert config.seeds >= 2
    assert config.data.dataset == "mnist1d" and config.model.batchnorm
    for grid in config.grids:
        assert len(grid.lrs) >= 4 and len(grid.weight_decays) >= 4


def test_log2_axis_gives_powers_of_two_with_step():
    config = load_sweep_config("smoke", overrides={"grid": {"adamw": {"lr_log2": [-10, -6, 2], "weight_decay_log2": [-3, -1]}}})
    grid = next(g for g in config.grids if g.optimizer == "adamw")
    assert grid.lrs == (2.0**-10, 2.0**-8, 2.0**-6)
    assert grid.weight_decays == (0.125, 0.25, 0.5)


def test_explicit_values_replace_a_presets_range_and_are_sorted():
    config = load_sweep_config("smoke", overrides={"grid": {"sgd": {"lr": [0.3, 0.1]}}})
    grid = next(g for g in config.grids if g.optimizer == "sgd")
    assert grid.lrs == (0.1, 0.3)


def test_plan_is_seed_major_and_complete():
    config = load_sweep_config("smoke")
    tasks = plan_tasks(config)
    assert len(tasks) == sum(g.cells for g in config.grids) * config.seeds
    half = len(tasks) // 2
    assert {t.seed for t in tasks[:half]} == {0} and {t.seed for t in tasks[half:]} == {1}
    assert len({t.key for t in tasks}) == len(tasks)


def test_run_key_is_stable_and_depends_on_every_setting():
    config = load_sweep_config("smoke")
    a = config.run_config("adamw", 0.01, 1e-3)
    assert a.key() == config.run_config("adamw", 0.01, 1e-3).key()
    assert a.key() != config.run_config("adam", 0.01, 1e-3).key()
    assert a.key() != config.run_config("adamw", 0.01, 2e-3).key()
    other = load_sweep_config("smoke", overrides={"train": {"epochs": 4}})
    assert a.key() != other.run_config("adamw", 0.01, 1e-3).key()


def test_sweep_config_round_trips_through_its_dict():
    config = load_sweep_config("default")
    assert SweepConfig.from_dict(config.to_dict()) == config


def test_parse_override_reads_toml_values():
    assert parse_override("train.epochs=30") == (["train", "epochs"], 30)
    assert parse_override("grid.adamw.lr_log2=[-10,-6]") == (["grid", "adamw", "lr_log2"], [-10, -6])
    assert parse_override("data.dataset=digits") == (["data", "dataset"], "digits")


def test_merge_is_deep():
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


BAD_INPUTS = [
    ({"bogus": 1}, "unknown config key bogus; known keys here: name, seeds, optimizers, precision, data, model, train, grid"),
    ({"train": {"epoch": 3}}, "unknown config key train.epoch; known keys here: epochs, batch_size, schedule, "
                              "momentum, beta1, beta2, eps, decay_scope, eval_batch_size, curves, dtype"),
    ({"grid": {"adamw": {"lr_log2": [-6, -9]}}}, "empty grid: grid.adamw.lr_log2 = [-6, -9] gives no learning rate"),
    ({"optimizers": []}, "empty grid: optimizers = [] selects no optimizer"),
    ({"grid": {"sgd": {"lr": [0.1, -0.1]}}}, "grid.sgd.lr: learning rate must be > 0, got -0.1"),
    ({"grid": {"sgdw": {"weight_decay": [-1e-4]}}}, "grid.sgdw.weight_decay: weight decay must be >= 0, got -0.0001"),
    ({"optimizers": ["adamx"]}, "optimizers must be one of sgd, sgdw, adam, adamw, adamw-cautious, sgdw-cautious, adamc, got 'adamx'"),
    ({"seeds": 0}, "seeds (runs per cell) must be an integer >= 1, got 0"),
    ({"train": {"epochs": "ten"}}, "train.epochs must be int, got 'ten'"),
    ({"train": {"beta2": 1.0}}, "train.beta2 must be in [0, 1), got 1.0"),
    ({"data": {"dataset": "mnist"}}, "data.dataset must be one of mnist1d, digits, cifar10, got 'mnist'"),
    ({"data": {"dataset": "cifar10"}}, "data.data_dir must name a folder for dataset cifar10 (--data-dir DIR)"),
    ({"model": {"name": "shake_shake"}}, "model.name 'shake_shake' takes 32x32 images (cifar10), got dataset 'mnist1d'"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS)
def test_bad_input_is_refused_with_its_message(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_sweep_config("smoke", overrides=overrides)
    assert str(caught.value) == message


def test_a_grid_table_with_both_forms_of_an_axis_is_refused():
    """Built directly here; through the layers (a --config table with both) see test_faults."""
    raw = read_preset("smoke")
    raw["grid"]["adam"]["lr"] = [0.1]  # beside the preset's lr_log2
    with pytest.raises(ConfigError, match=re.escape("grid.adam: give lr or lr_log2, not both")):
        sweep_config_from_dict(raw)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError) as caught:
        load_sweep_config("nope")
    assert str(caught.value) == f"unknown preset 'nope'; choose one of: {', '.join(available_presets())}"


def test_config_file_layers_over_the_preset(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nseeds = 3\n[train]\nepochs = 2\n[grid.adamw]\nlr = [0.001]\n')
    config = load_sweep_config("smoke", path, {"train": {"epochs": 5}})
    assert (config.name, config.seeds, config.train.epochs) == ("mine", 3, 5)
    assert next(g for g in config.grids if g.optimizer == "adamw").lrs == (0.001,)


def test_unreadable_and_invalid_config_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_sweep_config("smoke", tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = = 2\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_sweep_config("smoke", bad)
