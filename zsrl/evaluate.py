"""Zero-shot evaluation: prompt a pretrained model with rewards or goals, roll it out.

For a task ``r``: draw ``N`` dataset transitions, label them with ``r`` (the domain's
relabeller — for MuJoCo domains this replays the stored physics state, so labels equal the
environment's own rewards), infer ``z = model.infer_z_from_rewards(s', r)``, and roll out
``M`` episodes of ``π_z`` in parallel environments. Returns are the same task reward
summed over each episode (relabelled from the rollout's own transitions, so user-written
reward functions are scored exactly like built-in ones).

For a goal ``g``: ``z = model.infer_z_from_goal(g)`` (re-inferred every step for models
whose goal embedding depends on the current state), roll out, and report success
(``domain.goal_distance(final obs, g) <= domain.goal_threshold``) and distances.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from zsrl.collect import make_vector_env, reached_states
from zsrl.data import OfflineDataset, transitions

RewardFunction = Callable[[Any], np.ndarray]


def label_samples(
    dataset: OfflineDataset, reward_fn: RewardFunction, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``n`` random dataset transitions labelled by ``reward_fn``.

    Returns ``(next_obs, rewards, seconds_spent_labelling)`` on the dataset's device.
    """
    g = torch.Generator().manual_seed(seed)
    n = min(n, len(dataset))
    idx = torch.randperm(len(dataset), generator=g)[:n].to(dataset.device)
    batch = dataset.data[idx]
    t0 = time.perf_counter()
    rewards = np.asarray(reward_fn(transitions(batch)), dtype=np.float32).reshape(-1)
    elapsed = time.perf_counter() - t0
    if rewards.shape[0] != n:
        raise ValueError(f"the reward function returned {rewards.shape[0]} rewards for {n} transitions")
    if not np.isfinite(rewards).all():
        raise ValueError("the reward function returned NaN or inf rewards; fix it before evaluating")
    return batch["next", "observation"], torch.as_tensor(rewards, device=dataset.device), elapsed


@torch.no_grad()
def rollout(
    model: Any,
    domain: Any,
    z: torch.Tensor | None,
    episodes: int,
    seed: int,
    goal: np.ndarray | None = None,
    max_steps: int | None = None,
) -> dict[str, np.ndarray]:
    """Run ``episodes`` parallel episodes of ``π_z`` (first episode of each env only).

    Returns stacked arrays ``(T, E, ·)`` of observations, actions, next observations and
    physics states, plus ``alive`` (``(T, E)``, False after an env's episode ended).
    """
    envs = make_vector_env(domain, episodes, seed)
    device = model.device
    goal_t = None if goal is None else torch.as_tensor(goal, device=device, dtype=torch.float32)
    obs, info = envs.reset(seed=seed)
    physics = info.get("physics")
    alive = np.ones(episodes, dtype=bool)
    out: dict[str, list] = {k: [] for k in ("obs", "action", "next_obs", "physics", "next_physics", "alive")}
    horizon = max_steps or getattr(domain, "episode_length", 1000)
    repeat = getattr(model, "action_repeat", 1)  # the policy decides every `repeat` steps
    try:
        for t in range(horizon):
            if t % repeat == 0:
                obs_t = torch.as_tensor(obs, device=device)
                if goal_t is not None and model.goal_z_depends_on_obs:
                    zz = model.infer_z_from_goal(goal_t.expand(episodes, -1), obs_t)
                else:
                    zz = z.expand(episodes, -1)
                action = model.act(obs_t, zz, mean=True).cpu().numpy()
            next_obs, _, term, trunc, info = envs.step(action)
            done = term | trunc
            true_next, next_physics = reached_states(next_obs, info, done, "physics" in info)
            out["obs"].append(obs)
            out["action"].append(action)
            out["next_obs"].append(true_next)
            out["physics"].append(physics)
            out["next_physics"].append(next_physics)
            out["alive"].append(alive.copy())
            alive &= ~done
            obs, physics = next_obs, info.get("physics")
            if not alive.any():
                break
    finally:
        envs.close()
    return {k: (np.stack(v) if v and v[0] is not None else None) for k, v in out.items()}


def episode_returns(domain: Any, reward_fn: RewardFunction, traj: Mapping[str, np.ndarray]) -> np.ndarray:
    """Sum of ``reward_fn`` over each env's (alive) transitions: ``(E,)``."""
    from zsrl.envs.base import Transitions

    t, e = traj["alive"].shape

    def flat(key):
        x = traj[key]
        return None if x is None else x.reshape(t * e, -1)

    batch = Transitions(flat("obs"), flat("action"), flat("next_obs"), flat("physics"), flat("next_physics"))
    rewards = np.asarray(reward_fn(batch), dtype=np.float64).reshape(t, e)
    return (rewards * traj["alive"]).sum(0)


def evaluate_tasks(
    model: Any,
    domain: Any,
    dataset: OfflineDataset,
    tasks: list[str] | Mapping[str, RewardFunction],
    *,
    episodes: int = 10,
    reward_samples: int | None = None,
    seed: int = 0,
    trajectories: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Reward-prompted zero-shot returns per task (see the module docstring).

    ``trajectories``, if given, receives each task's rollout as ``"task:NAME"`` (for pictures).
    """
    fns = tasks if isinstance(tasks, Mapping) else {t: task_reward_fn(domain, t) for t in tasks}
    n = reward_samples or getattr(model.cfg, "inference_samples", 10_000)
    results = {}
    for k, (name, fn) in enumerate(fns.items()):
        next_obs, rewards, label_time = label_samples(dataset, fn, n, seed + 7919 * k)
        z = model.infer_z_from_rewards(next_obs.to(model.device), rewards.to(model.device))
        traj = rollout(model, domain, z, episodes, seed=seed + 1000 * (k + 1))
        if trajectories is not None:
            trajectories[f"task:{name}"] = traj
        returns = episode_returns(domain, fn, traj)
        results[name] = {
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()),
            "returns": returns.tolist(),
            "reward_samples": int(next_obs.shape[0]),
            "label_seconds": round(label_time, 4),
            "z": z.squeeze(0).cpu().tolist(),
        }
    return results


def evaluate_goals(
    model: Any,
    domain: Any,
    goals: list[str],
    *,
    episodes: int = 10,
    seed: int = 0,
    trajectories: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Goal-prompted success rate and distances per named goal."""
    results = {}
    for k, name in enumerate(goals):
        goal = domain.goal(name)
        z = model.infer_z_from_goal(torch.as_tensor(goal, device=model.device))
        traj = rollout(model, domain, z, episodes, seed=seed + 1000 * (k + 1), goal=goal)
        if trajectories is not None:
            trajectories[f"goal:{name}"] = traj
        alive = traj["alive"]
        last = alive.sum(0) - 1  # index of each env's last transition
        final_obs = traj["next_obs"][last, np.arange(alive.shape[1])]
        dist = domain.goal_distance(traj["next_obs"], goal)  # (T, E)
        final = domain.goal_distance(final_obs, goal)
        results[name] = {
            "success": float((final <= domain.goal_threshold).mean()),
            "final_distance": float(final.mean()),
            "min_distance": float(np.where(alive, dist, np.inf).min(0).mean()),
            "threshold": domain.goal_threshold,
        }
    return results


def task_reward_fn(domain: Any, name: str) -> RewardFunction:
    """The batched reward function of the domain's task ``name`` (validated now, not later)."""
    if name not in domain.tasks:
        domain.reward(name, None)  # raises UnknownTaskError listing the domain's tasks
    return lambda batch: domain.reward(name, batch)
