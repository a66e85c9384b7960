import json
from dataclasses import asdict
from pathlib import Path

import pytest

from zsrl.config import (
    RunConfig,
    from_dict,
    list_presets,
    load_run_config,
    parse_overrides,
    run_config_from_dict,
)
from zsrl.errors import UserError


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
        run_config_from_dict({"agent": {"name": "fb", "actor_reduction": "max"}})


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


SNAPSHOT = Path(__file__).parent / "snapshots" / "presets.json"


def test_every_preset_resolves_to_its_snapshot():
    """Presets only state what differs from their base, yet resolve to the same configs as
    before inheritance (tests/snapshots/presets.json, taken from the fully spelled-out files)."""
    snapshot = json.loads(SNAPSHOT.read_text())
    resolved = {name: asdict(load_run_config(name)) for name in list_presets()}
    assert set(snapshot) <= set(resolved)
    for name, expected in snapshot.items():
        assert resolved[name] == expected, name
    assert {"fb/generic", "fb/generic_cpu", "fre/generic", "fre/generic_cpu", "td3/generic",
            "td3/generic_cpu"} <= set(resolved)


def test_a_preset_extends_its_base(tmp_path):
    (tmp_path / "parent.yaml").write_text("base: fb/walker_cpu\nagent:\n  z_dim: 7\n")
    (tmp_path / "child.yaml").write_text("base: parent\ntrain:\n  steps: 3\n")
    cfg = load_run_config(tmp_path / "child.yaml")
    assert (cfg.domain, cfg.agent.z_dim, cfg.agent.hidden_dim, cfg.train.steps) == ("walker", 7, 256, 3)


def test_a_base_loop_or_a_missing_base_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(UserError, match="chain loops"):
        load_run_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: fb/nowhere\n")
    with pytest.raises(UserError, match="neither a file nor a preset"):
        load_run_config(tmp_path / "c.yaml")
