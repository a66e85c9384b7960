"""Exploration policies for reward-free data collection.

An explorer maps a batch of observations (one per parallel environment) to actions in
``[-1, 1]`` and may learn from the transitions it produced:

* :class:`RandomExplorer` — uniform random actions (``sticky``: each held for k steps, or for a
  random multiple of k steps, some of them the zero action).
* :class:`RNDExplorer` — random network distillation (Burda et al., 2019), as URLB/ExORL
  collect their RND datasets: a DDPG actor-critic trained online on the intrinsic reward

  .. math:: r^{int}(s') = \\lVert f_\\theta(\\bar s') - f_{\\text{fixed}}(\\bar s') \\rVert^2
            / \\sigma_{r}

  where ``f_fixed`` is a frozen random network, ``f_θ`` a predictor trained to match it
  (so the error is large on rarely visited states), ``s̄'`` the observation normalised by
  running statistics and ``σ_r`` the running standard deviation of the intrinsic reward.
  No task reward is ever used.
* :class:`SB3Explorer` — a saved stable-baselines3 policy with optional Gaussian noise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zsrl.errors import UserError
from zsrl.nn import RunningMeanStd, clipped_noise_action, mlp, soft_update


class RandomExplorer:
    """Uniform random actions in ``[-1, 1]``, each held for a number of consecutive steps.

    ``hold=1`` is the classic uniform-random collector. Holding actions (temporally
    correlated noise) lets damped bodies build up speed: on the point-mass maze, ``hold=25``
    visits several times more of the floor than ``hold=1`` for the same budget.

    With ``hold_max > hold`` every environment draws each hold's length independently and
    uniformly from the multiples of ``hold`` up to ``hold_max`` (long holds travel, short ones
    turn), and with ``rest > 0`` a held action is the zero action with that probability (the
    body brakes and stays still, which a goal-reaching policy must learn to do). Holds that
    last a multiple of ``hold`` keep every ``hold``-step window of one action usable for
    ``agent.action_repeat = hold``. The defaults draw exactly the classic sticky stream.
    """

    def __init__(self, action_dim: int, seed: int = 0, hold: int = 1, hold_max: int | None = None,
                 rest: float = 0.0):
        hold_max = hold if hold_max is None else hold_max
        if hold < 1:
            raise UserError("--hold must be at least 1")
        if hold_max < hold or hold_max % hold:
            raise UserError(f"--hold-max must be a multiple of --hold ({hold}) and at least it, got {hold_max}")
        if not 0.0 <= rest <= 1.0:
            raise UserError(f"--rest is a probability in [0, 1], got {rest!r}")
        self.action_dim, self.hold, self.hold_max, self.rest = action_dim, hold, hold_max, rest
        self.name = "random" if hold == hold_max == 1 and rest == 0 else f"sticky{hold}"
        if hold_max > hold:
            self.name += f"-{hold_max}"
        if rest > 0:
            self.name += f"-rest{rest:g}"
        self.rng = np.random.default_rng(seed)
        self.action: np.ndarray | None = None
        self.steps_left = np.zeros(0, dtype=np.int64)

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` new held actions and their lengths (no extra draws for classic sticky holds)."""
        action = self.rng.uniform(-1.0, 1.0, size=(n, self.action_dim)).astype(np.float32)
        if self.rest > 0:
            action[self.rng.random(n) < self.rest] = 0.0
        if self.hold_max == self.hold:
            return action, np.full(n, self.hold)
        return action, self.hold * self.rng.integers(1, self.hold_max // self.hold + 1, size=n)

    def act(self, obs: np.ndarray) -> np.ndarray:
        n = obs.shape[0]
        if self.action is None or self.action.shape[0] != n:
            self.action, self.steps_left = self._draw(n)
        else:
            expired = self.steps_left == 0
            if expired.any():
                self.action[expired], self.steps_left[expired] = self._draw(int(expired.sum()))
        self.steps_left -= 1
        return self.action.copy()

    def observe(self, obs, action, next_obs, terminated) -> None:
        pass


@dataclass
class RNDConfig:
    """Hyper-parameters of the RND explorer (URLB uses width 1024; 256 fits a laptop CPU)."""

    hidden_dim: int = 256
    rep_dim: int = 64
    lr: float = 3e-4
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 0.01
    #: exploration noise added to the actor's action, and TD3 target-smoothing noise
    stddev: float = 0.2
    stddev_clip: float = 0.3
    #: uniform random actions for the first transitions, before learning starts
    seed_transitions: int = 4000
    #: gradient updates per collected transition (0.125 = one update per 8 env steps)
    updates_per_transition: float = 0.125
    device: str = "cpu"


class RNDExplorer:
    """DDPG on the RND intrinsic reward (see the module docstring)."""

    name = "rnd"

    def __init__(self, obs_dim: int, action_dim: int, capacity: int, cfg: RNDConfig | None = None, seed: int = 0):
        self.cfg = cfg = cfg or RNDConfig()
        self.device = torch.device(cfg.device)
        self.action_dim = action_dim
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        h = cfg.hidden_dim
        dev = self.device
        self.obs_rms = RunningMeanStd(obs_dim).to(dev)
        self.rew_rms = RunningMeanStd(()).to(dev)
        self.predictor = mlp(obs_dim, [h, h], cfg.rep_dim, first_layernorm_tanh=False).to(dev)
        self.target = mlp(obs_dim, [h, h], cfg.rep_dim, first_layernorm_tanh=False).to(dev).requires_grad_(False)
        self.actor = mlp(obs_dim, [h, h], action_dim).to(dev)
        self.critic = mlp(obs_dim + action_dim, [h, h], 1, ensemble=2).to(dev)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.opt = torch.optim.Adam(
            [*self.predictor.parameters(), *self.critic.parameters()], lr=cfg.lr
        )
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.buffer = {
            "obs": torch.zeros(capacity, obs_dim, device=dev),
            "action": torch.zeros(capacity, action_dim, device=dev),
            "next_obs": torch.zeros(capacity, obs_dim, device=dev),
            "not_done": torch.zeros(capacity, 1, device=dev),
        }
        self.size = 0
        self.update_credit = 0.0

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.size < self.cfg.seed_transitions:
            return self.rng.uniform(-1, 1, size=(obs.shape[0], self.action_dim)).astype(np.float32)
        o = self.obs_rms.normalize(torch.as_tensor(obs, device=self.device))
        mean = torch.tanh(self.actor(o))
        noise = torch.randn(mean.shape, device=self.device, generator=self.gen) * self.cfg.stddev
        return (mean + noise).clamp(-1, 1).cpu().numpy()

    def observe(self, obs, action, next_obs, terminated) -> None:
        n = obs.shape[0]
        cap = self.buffer["obs"].shape[0]
        n = min(n, cap - self.size)
        if n <= 0:
            return
        sl = slice(self.size, self.size + n)
        self.buffer["obs"][sl] = torch.as_tensor(obs[:n], device=self.device)
        self.buffer["action"][sl] = torch.as_tensor(action[:n], device=self.device)
        self.buffer["next_obs"][sl] = torch.as_tensor(next_obs[:n], device=self.device)
        self.buffer["not_done"][sl] = torch.as_tensor(~terminated[:n], device=self.device).float().unsqueeze(-1)
        self.obs_rms.update(self.buffer["obs"][sl])
        self.size += n
        if self.size < self.cfg.seed_transitions:
            return
        self.update_credit += n * self.cfg.updates_per_transition
        while self.update_credit >= 1:
            self.update_credit -= 1
            self._update()

    def _update(self) -> None:
        cfg = self.cfg
        idx = torch.randint(self.size, (cfg.batch_size,), device=self.device, generator=self.gen)
        obs = self.obs_rms.normalize(self.buffer["obs"][idx])
        next_obs = self.obs_rms.normalize(self.buffer["next_obs"][idx])
        action, not_done = self.buffer["action"][idx], self.buffer["not_done"][idx]

        pred_error = (self.predictor(next_obs) - self.target(next_obs)).pow(2).sum(-1, keepdim=True)
        with torch.no_grad():
            self.rew_rms.update(pred_error.view(-1))
            reward = pred_error / (self.rew_rms.var.sqrt() + 1e-8)
            next_action = clipped_noise_action(torch.tanh(self.actor(next_obs)), cfg.stddev, cfg.stddev_clip)
            target_q = self.critic_target(torch.cat([next_obs, next_action], -1)).min(0).values
            target_q = reward + cfg.discount * not_done * target_q
        q = self.critic(torch.cat([obs, action], -1))
        critic_loss = F.mse_loss(q, target_q.expand_as(q))
        self.opt.zero_grad(set_to_none=True)
        (critic_loss + pred_error.mean()).backward()
        self.opt.step()

        pi = torch.tanh(self.actor(obs))
        actor_loss = -self.critic(torch.cat([obs, pi], -1)).min(0).values.mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        soft_update(self.critic_target, self.critic, cfg.tau)


class SB3Explorer:
    """Roll out a saved stable-baselines3 policy, optionally with Gaussian action noise.

    The algorithm class (SAC, TD3, PPO …) is read from the zip, so any SB3 model trained on
    the domain's environment (actions in ``[-1, 1]``) works.
    """

    name = "sb3"

    def __init__(self, path: str | Path, action_dim: int, noise_std: float = 0.0, seed: int = 0, device: str = "cpu"):
        import stable_baselines3 as sb3
        from stable_baselines3.common.save_util import load_from_zip_file

        path = Path(path)
        if not path.is_file():
            raise UserError(f"--policy {path} does not exist; pass the .zip written by SB3's model.save()")
        try:
            data, _, _ = load_from_zip_file(path, device=device, load_data=True)
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            raise UserError(f"--policy {path} is not a readable stable-baselines3 model: {exc}") from None
        module = getattr(data.get("policy_class"), "__module__", "")  # e.g. stable_baselines3.sac.policies
        algo_name = module.split(".")[1].upper() if module.startswith("stable_baselines3.") else ""
        algo = getattr(sb3, algo_name, None)
        if algo is None:
            raise UserError(f"--policy {path}: cannot tell which SB3 algorithm saved it (policy module {module!r})")
        self.model = algo.load(path, device=device)
        self.noise_std = noise_std
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        action, _ = self.model.predict(obs, deterministic=True)
        action = np.asarray(action, dtype=np.float32).reshape(obs.shape[0], -1)
        if action.shape[1] != self.action_dim:
            raise UserError(f"the SB3 policy outputs {action.shape[1]} action dims; the domain has {self.action_dim}")
        if self.noise_std > 0:
            action = action + self.rng.normal(0.0, self.noise_std, size=action.shape).astype(np.float32)
        return np.clip(action, -1.0, 1.0)

    def observe(self, obs, action, next_obs, terminated) -> None:
        pass
