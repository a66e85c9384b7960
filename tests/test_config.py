import pytest

from zsrl.config import (
    RunConfig,
    from_dict,
    list_presets,
    load_run_config,
    parse_overrides,
    run_config_from_dict,
)
from zsrl.utils import UserError


def test_overrides_are_nested_and_typed():
    assert parse_overrides(["agent.z_dim=32", "train.device=cuda", "train.compile=true"]) == {
        "agent": {"z_dim": 32},
        "train": {"device": "cuda", "compile": True},
    }


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(UserError, match="unknown config key zdim in agent"):
        run_config_from_dict({"agent": {"name": "fb", "zdim": 3}})


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(UserError, match="train.steps: expected an integer"):
        from_dict(RunConfig, {"train": {"steps": "many"}})
    with pytest.raises(UserError, match="agent.lr_f: expected a number"):
        run_config_from_dict({"agent": {"name": "fb", "lr_f": "fast"}})


def test_literal_values_are_checked():
    with pytest.raises(UserError, match="not one of"):
        run_config_from_dict({"agent": {"name": "fb", "target_reduction": "max"}})


def test_unknown_agent_lists_known_agents():
    with pytest.raises(UserError, match="unknown agent 'nope'.*fb"):
        run_config_from_dict({"agent": {"name": "nope"}})


@pytest.mark.parametrize("preset", ["fb/point_mass_maze", "fb/point_mass_maze_cpu", "fb/walker", "fb/walker_cpu",
                                    "fb/cheetah", "fb/cheetah_cpu", "fb/quadruped", "fb/quadruped_cpu"])
def test_presets_parse(preset):
    assert preset in list_presets()
    cfg = load_run_config(preset, ["train.steps=7"])
    assert cfg.train.steps == 7 and cfg.agent.name == "fb"
    assert cfg.domain == preset.split("/")[1].removesuffix("_cpu")


def test_missing_preset_lists_presets():
    with pytest.raises(UserError, match="neither a file nor a preset.*fb/walker"):
        load_run_config("fb/nowhere")


def test_exponent_without_dot_is_a_float():
    cfg = load_run_config("fb/point_mass_maze_cpu", ["agent.lr_b=1e-5"])
    assert cfg.agent.lr_b == 1e-5
