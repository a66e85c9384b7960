"""FB learns: a short pretraining on reward-free maze data, then goal prompts steer the agent.

Sized for seconds-to-a-minute on a 2-core CPU: 20k sticky-random transitions in the maze's
start room, a tiny FB, 6k updates. Two goal prompts must (a) each bring the agent much closer
to its goal than a random policy gets, and (b) behave differently — each prompted agent ends
closer to its own goal than the agent prompted with the other goal does. VC-FB must pass the
same test with FB's settings and the penalty's defaults. (MC-FB passes it too, but by a
margin of 6–12% on the random-policy criterion, too thin to assert across platforms.)
"""

import numpy as np
import pytest
import torch
from fakes import FakeModel

from zsrl.checkpoint import load_run_model
from zsrl.collection import collect
from zsrl.config import run_config_from_dict
from zsrl.envs import make_domain
from zsrl.evaluation import rollout
from zsrl.explore import RandomExplorer
from zsrl.training import start_run

GOALS = {"corner": np.array([-0.27, 0.27, 0, 0], np.float32), "room_centre": np.array([-0.15, 0.15, 0, 0], np.float32)}


def _final_distance(model, domain, z, goal):
    traj = rollout(model, domain, z, episodes=8, seed=1, max_steps=300)
    return np.linalg.norm(traj.next_observation[-1, :, :2] - goal[:2], axis=-1).mean()


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["fb", "vcfb"])
def test_goal_prompts_reach_their_goals(tmp_path, agent):
    torch.manual_seed(0)
    domain = make_domain("point_mass_maze")
    data = collect(domain, RandomExplorer(2, seed=0, hold=25), 20_000, num_envs=8, progress=False,
                   episode_length=domain.episode_length)  # 1000-step episodes: data in the start room
    data.save(tmp_path / "data")
    cfg = run_config_from_dict({
        "domain": "point_mass_maze",
        "agent": {"name": agent, "z_dim": 16, "hidden_dim": 64, "embedding_dim": 32, "backward_hidden_dim": 64,
                  "lr_f": 5e-4, "lr_b": 5e-4, "lr_actor": 5e-4, "discount": 0.95},
        "train": {"steps": 6000, "batch_size": 128, "device": "cpu", "log_every": 1000,
                  "checkpoint_every": 6000, "progress": False},
    })
    model = load_run_model(start_run(cfg, tmp_path / "data", tmp_path / "run"), domain)

    z = {name: model.infer_z_from_goal(torch.as_tensor(g)) for name, g in GOALS.items()}
    for name, goal in GOALS.items():
        other = next(n for n in GOALS if n != name)
        prompted = _final_distance(model, domain, z[name], goal)
        misprompted = _final_distance(model, domain, z[other], goal)
        random = _final_distance(FakeModel(), domain, z[name], goal)
        assert prompted < 0.7 * random, (name, prompted, random)
        assert prompted < misprompted, (name, prompted, misprompted)
