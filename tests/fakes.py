"""Stand-in models for rollouts in tests: what a Policy reads of a model, acting at random or
with zeros."""

import torch


class FakeModel:
    """A model of ``obs_dim``/``action_dim`` without memory or held actions whose actions are
    uniform in [-1, 1] (``zero``: always 0)."""

    device = torch.device("cpu")
    action_repeat, history_length, goal_z_depends_on_obs = 1, 0, False

    def __init__(self, obs_dim: int = 4, action_dim: int = 2, zero: bool = False):
        self.obs_dim, self.action_dim, self.zero = obs_dim, action_dim, zero

    def act(self, obs, z, mean=True):
        assert obs.shape[1] == self.obs_dim and mean
        if self.zero:
            return torch.zeros(obs.shape[0], self.action_dim)
        return torch.rand(obs.shape[0], self.action_dim) * 2 - 1
