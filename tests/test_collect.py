"""Collectors and the `zsrl collect` / `zsrl data describe` commands."""

import itertools

import numpy as np
import pytest
import torch

from zsrl.cli import main
from zsrl.collection import collect
from zsrl.data import OfflineDataset
from zsrl.envs import make_domain
from zsrl.errors import UserError
from zsrl.explore import RandomExplorer, RNDConfig, RNDExplorer


def test_cli_collect_and_describe(tmp_path, capsys):
    out = tmp_path / "maze"
    assert main(["collect", "--domain", "point_mass_maze", "--collector", "random", "--transitions", "1500",
                 "--num-envs", "3", "--out", str(out), "--no-progress"]) == 0
    ds = OfflineDataset.load(out, domain="point_mass_maze")
    assert len(ds) == 1500 and ds.has_physics and (out / "coverage.png").read_bytes()[:4] == b"\x89PNG"
    # episodes are contiguous and their steps count up from 0
    ep, step = ds.data["episode"], ds.data["step"]
    assert bool(((ep[1:] != ep[:-1]) | (step[1:] == step[:-1] + 1)).all())
    # consecutive transitions inside an episode chain: next observation = following observation
    same = ep[1:] == ep[:-1]
    assert torch.equal(ds.data["next", "observation"][:-1][same], ds.data["observation"][1:][same])
    capsys.readouterr()
    assert main(["data", "describe", str(out)]) == 0
    text = capsys.readouterr().out
    assert "transitions  1,500" in text and "of floor cells" in text
    assert main(["collect", "--domain", "point_mass_maze", "--transitions", "10", "--out", str(out)]) == 2
    assert "already exists" in " ".join(capsys.readouterr().err.split())


def test_episode_boundaries_keep_the_true_last_observation():
    """SAME_STEP autoreset: the last transition of an episode ends in the final state, not a reset."""
    domain = make_domain("point_mass_maze")
    ds = collect(domain, RandomExplorer(2, seed=0), 2100, num_envs=2, progress=False, episode_length=1000)
    last = torch.nonzero(ds.data["step"] == 999).squeeze(-1)
    assert last.numel() == 2
    for i in last.tolist():
        # the stored next/physics reproduces next/observation (position, velocity), not a fresh start
        phys = ds.data["next", "physics"][i].numpy()
        np.testing.assert_allclose(ds.data["next", "observation"][i].numpy(), phys[:4].astype(np.float32), atol=1e-6)


def _episode_lengths(ds):
    return torch.bincount(ds.data["episode"]).tolist()


def test_collection_episode_length():
    """Episodes are cut at ``episode_length`` steps (the maze collects 50,000-step episodes by
    default, a dm_control time limit set to the step), recorded in the metadata."""
    maze = make_domain("point_mass_maze")
    assert maze.collection_episode_length == 50_000 and maze.describe()["collection_episode_length"] == 50_000
    ds = collect(maze, RandomExplorer(2, seed=0), 2 * 1300, num_envs=2, progress=False)
    assert _episode_lengths(ds) == [1300, 1300] and ds.meta["episode_length"] == 50_000  # no reset at 1000
    ds = collect(maze, RandomExplorer(2, seed=0), 2 * 700, num_envs=2, progress=False, episode_length=300)
    assert _episode_lengths(ds) == [300, 300, 300, 300, 100, 100] and ds.meta["episode_length"] == 300
    assert bool(ds.data["next", "terminated"].any()) is False  # a time limit truncates, never terminates
    walker = make_domain("walker")
    assert walker.collection_episode_length is None
    ds = collect(walker, RandomExplorer(6, seed=0), 25, num_envs=1, progress=False, episode_length=10)
    assert _episode_lengths(ds) == [10, 10, 5] and ds.meta["episode_length"] == 10


def test_collection_episode_length_of_plugin_domains(tmp_path, capsys):
    """A gymnasium domain sets its TimeLimit; a domain without the hook refuses other lengths."""
    from examples.pendulum_domain import PendulumDomain
    from zsrl.envs import Domain

    ds = collect(PendulumDomain(), RandomExplorer(1, seed=0), 500, num_envs=1, progress=False, episode_length=150)
    assert _episode_lengths(ds) == [150, 150, 150, 50]

    class Fixed(Domain):
        name, episode_length = "fixed", 200

        def make_env(self, seed=None, render_mode=None):
            return PendulumDomain().make_env(seed=seed)

        @property
        def tasks(self):
            return {}

    assert _episode_lengths(collect(Fixed(), RandomExplorer(1, seed=0), 300, num_envs=1, progress=False)) == [200, 100]
    with pytest.raises(UserError, match="cannot collect episodes of 50 steps"):
        collect(Fixed(), RandomExplorer(1, seed=0), 300, num_envs=1, progress=False, episode_length=50)
    out = tmp_path / "p"
    assert main(["collect", "--domain", "point_mass_maze", "--collector", "random", "--transitions", "100",
                 "--num-envs", "1", "--episode-length", "40", "--out", str(out), "--no-progress"]) == 0
    assert _episode_lengths(OfflineDataset.load(out)) == [40, 40, 20]
    assert main(["collect", "--domain", "point_mass_maze", "--transitions", "10", "--episode-length", "0",
                 "--out", str(tmp_path / "q")]) == 2
    assert "--episode-length must be a positive integer" in capsys.readouterr().err


def test_sticky_random_covers_more_of_the_maze_than_uniform_random():
    domain = make_domain("point_mass_maze")
    cover = {}
    for hold in (1, 50):
        ds = collect(domain, RandomExplorer(2, seed=0, hold=hold), 8000, num_envs=8, progress=False)
        cover[hold] = domain.coverage(ds.data["next", "observation"][:, :2].numpy())
    assert cover[50] > 2 * cover[1]


def _runs(column: np.ndarray) -> list[tuple[int, bool]]:
    """(length, is zero action) of each run of one held action in an env's action stream."""
    change = np.flatnonzero(np.any(column[1:] != column[:-1], axis=-1)) + 1
    bounds = [0, *change.tolist(), len(column)]
    return [(b - a, bool(np.all(column[a] == 0))) for a, b in itertools.pairwise(bounds)]


def test_sticky_holds_of_random_length_and_rests():
    """Each env holds every action for its own multiple of `hold` up to `hold_max`; a `rest`
    fraction of the holds is the zero action; the classic sticky stream is unchanged."""
    explorer = RandomExplorer(2, seed=0, hold=10, hold_max=50, rest=0.25)
    assert explorer.name == "sticky10-50-rest0.25"
    actions = np.stack([explorer.act(np.zeros((4, 4))) for _ in range(20_000)])  # (T, env, 2)
    runs = [r for env in range(4) for r in _runs(actions[:, env])[1:-1]]  # whole holds only
    lengths = np.array([n for n, _ in runs])
    # (consecutive rest holds merge into one run, so lengths are checked on moving holds)
    moving = lengths[[not zero for _, zero in runs]]
    assert set(moving.tolist()) == {10, 20, 30, 40, 50}
    assert 0.2 < np.all(actions == 0, axis=-1).mean() < 0.3  # a quarter of the steps rest
    starts = [np.flatnonzero(np.any(actions[1:, e] != actions[:-1, e], axis=-1)) for e in range(4)]
    assert not all(np.array_equal(starts[0], s) for s in starts[1:])  # envs hold independently
    # defaults: actions change every `hold` steps, all envs at once, as uniform draws of one stream
    classic, rng = RandomExplorer(2, seed=3, hold=5), np.random.default_rng(3)
    for t in range(20):
        if t % 5 == 0:
            expected = rng.uniform(-1, 1, size=(3, 2)).astype(np.float32)
        np.testing.assert_array_equal(classic.act(np.zeros((3, 4))), expected)
    for kwargs, message in [({"hold": 10, "hold_max": 25}, "multiple of --hold"),
                            ({"hold": 10, "hold_max": 5}, "multiple of --hold"),
                            ({"rest": 1.5}, "--rest is a probability")]:
        with pytest.raises(UserError, match=message):
            RandomExplorer(2, **kwargs)


def test_rnd_explorer_learns_online():
    explorer = RNDExplorer(4, 2, capacity=3000, cfg=RNDConfig(hidden_dim=32, rep_dim=8, batch_size=32,
                                                             seed_transitions=500, updates_per_transition=0.1))
    before = [p.clone() for p in explorer.actor.parameters()]
    ds = collect(make_domain("point_mass_maze"), explorer, 3000, num_envs=4, progress=False)
    assert len(ds) == 3000 and ds.meta["collector"] == "rnd"
    assert any(not torch.equal(a, b) for a, b in zip(before, explorer.actor.parameters()))
    assert float(explorer.rew_rms.count) > 100


def test_sb3_collector(tmp_path):
    from stable_baselines3 import TD3

    domain = make_domain("point_mass_maze")
    TD3("MlpPolicy", domain.make_env(seed=0), policy_kwargs={"net_arch": [16]}, seed=0).save(tmp_path / "policy.zip")
    assert main(["collect", "--domain", "point_mass_maze", "--collector", "sb3", "--policy", str(tmp_path / "policy.zip"),
                 "--action-noise", "0.1", "--transitions", "200", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    assert OfflineDataset.load(tmp_path / "d").meta["collector"] == "sb3"


def test_unknown_domain_is_a_clear_error(tmp_path, capsys):
    assert main(["collect", "--domain", "nowhere", "--transitions", "10", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown domain 'nowhere'" in err and "point_mass_maze" in err


@pytest.mark.parametrize("domain", ["examples.pendulum_domain:PendulumDomain"])
def test_plugin_domain_collects_by_path(tmp_path, domain):
    assert main(["collect", "--domain", domain, "--collector", "random", "--transitions", "300",
                 "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    ds = OfflineDataset.load(tmp_path / "p")
    assert ds.meta["domain_spec"] == domain and not ds.has_physics


def test_collect_and_pipeline_share_one_collector_configuration(capsys):
    """`zsrl collect` and `zsrl pipeline` build the same CollectorConfig from their defaults,
    and the maze's default collector is the sticky one: collecting by hand gives the quick
    start's data."""
    from zsrl.cli import _collector_config, build_parser
    from zsrl.collection import CollectorConfig
    from zsrl.envs import make_domain

    parser = build_parser()
    for argv in (["collect", "--domain", "point_mass_maze", "--transitions", "9", "--out", "o"], ["pipeline"]):
        assert _collector_config(parser.parse_args(argv)) == CollectorConfig(), argv
    assert CollectorConfig().collector_for(make_domain("point_mass_maze")) == "sticky"
    assert CollectorConfig().collector_for(make_domain("walker")) == "rnd"
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    hold, hold_max, rest = CollectorConfig().sticky()
    assert (hold, hold_max, rest) == (10, 100, 0.2)  # the quick start's
    assert f"(default: {hold})" in text and f"(default: {rest:g})" in text and "ten times --hold" in text
