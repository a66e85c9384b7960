"""Zero-shot evaluation: prompt a pretrained model with rewards or goals, roll it out.

For a task ``r``: draw ``N`` dataset transitions, label them with ``r`` (the domain's
relabeller — for MuJoCo domains this replays the stored physics state, so labels equal the
environment's own rewards), infer ``z = model.infer_z_from_transitions(s, s', r)`` (for FB and
FRE: from ``(s', r)``), and roll out
``M`` episodes of ``π_z`` in parallel environments. Returns are the same task reward
summed over each episode (relabelled from the rollout's own transitions, so user-written
reward functions are scored exactly like built-in ones).

For a goal ``g``: ``z = model.infer_z_from_goal(g)`` (re-inferred every step for models
whose goal embedding depends on the current state), roll out, and report success
(``domain.goal_success``: the final state within ``domain.goal_threshold`` of ``g``, or, for
domains with ``goal_dwell_steps``, that many states within it) and distances. A dense goal
task (``dense_<g>``, reward ``−goal_distance``) prompted with rewards is scored the same way
as well as by its return, so goal prompts, reward prompts and an oracle trained on the dense
reward are compared on one footing.

Two levels:

* one model, one seed — :func:`evaluate_tasks`, :func:`evaluate_goals` (plain dicts per
  task/goal; the training loop's periodic evaluation uses these);
* a run directory — :func:`evaluate_run` returns an :class:`Evaluation`: which weights were
  scored (:class:`ScoredModel`), per-task and per-goal results over seeds, the aggregate,
  and the first seed's :class:`Rollout` per prompt for pictures and videos.
  :func:`compare_with_oracle` adds "% of oracle". Rendering lives in :mod:`zsrl.report`
  and :mod:`zsrl.plots`; the command line in :mod:`zsrl.cli`.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from zsrl.agents.base import Model, Policy
from zsrl.checkpoint import (
    CHECKPOINT,
    FINAL_MODEL,
    check_model_fits_domain,
    find_checkpoint,
    find_final_model,
    is_complete,
    load_model_dir,
    read_manifest,
)
from zsrl.collection import env_errors, make_vector_env, reached_states
from zsrl.config import run_config_from_dict
from zsrl.data import OfflineDataset, Transitions, run_dataset
from zsrl.envs import Domain, RewardFn, make_domain, reward_from_arrays
from zsrl.envs.pomdp import split_variant
from zsrl.errors import CheckpointError, UserError
from zsrl.registry import agent_class, import_object
from zsrl.stats import aggregate
from zsrl.storage import read_json
from zsrl.utils import now_iso, resolve_device, versions

#: "% of oracle" is only defined when the oracle's mean return reaches this (a near-zero
#: denominator — an oracle that failed too — would make any ratio meaningless)
MIN_ORACLE_RETURN = 1.0


# ---- results ----------------------------------------------------------------------------
@dataclass
class Rollout:
    """``E`` parallel episodes of one prompt, stacked over ``T`` steps.

    Episode ``e`` started from ``env.reset(seed=seed + e)`` of ``domain.make_env(seed=seed + e)``
    (environments are deterministic given that seed, so replaying ``action[:, e]`` there
    reproduces the episode: this is how :func:`zsrl.plots.policy_video` films it).
    """

    observation: np.ndarray  # (T, E, obs_dim)
    action: np.ndarray  # (T, E, action_dim)
    next_observation: np.ndarray  # (T, E, obs_dim), the states reached (never a reset)
    alive: np.ndarray  # (T, E) bool, False after an episode ended
    seed: int
    physics: np.ndarray | None = None  # (T, E, physics_dim)
    next_physics: np.ndarray | None = None

    def as_transitions(self) -> Transitions:
        """All ``T·E`` steps as one batch (dead steps included; weight them by ``alive``)."""
        t, e = self.alive.shape

        def flat(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x.reshape(t * e, -1)

        return Transitions(flat(self.observation), flat(self.action), flat(self.next_observation),
                           flat(self.physics), flat(self.next_physics))

    def episode_length(self, episode: int) -> int:
        return int(self.alive[:, episode].sum())


@dataclass
class ScoredModel:
    """Which weights an evaluation scored: the final model or a checkpoint, at which step."""

    source: str  # "final model" or "checkpoint"
    path: str
    step: int  # training updates behind the weights
    total_steps: int  # the run's train.steps

    def __str__(self) -> str:
        return f"the {self.source} at step {self.step:,} of {self.total_steps:,} ({self.path})"


@dataclass
class GoalResult:
    """Success rate and distances of rollouts towards one goal, averaged over seeds."""

    success: float  # the domain's rule (``Domain.goal_success``)
    reached: float  # fraction of episodes with at least one state within the threshold
    final_distance: float
    min_distance: float
    time_within: float  # fraction of the episodes' steps within the threshold
    threshold: float
    #: success under ``Domain.reference_goal_dwell_steps`` (None where the domain has none)
    reference_success: float | None = None


@dataclass
class TaskResult:
    """Reward-prompted returns of one task over every seed's episodes."""

    mean_return: float
    returns: list[float]
    per_seed_mean: list[float]
    reward_samples: int
    label_seconds: float
    oracle_return: float | None = None
    oracle: str | None = None
    pct_of_oracle: float | None = None
    goal: GoalResult | None = None  # for a dense goal task: how close its rollouts came


@dataclass
class Evaluation:
    """The result of :func:`evaluate_run`: plain data (``to_dict()`` is its results.json)."""

    run_dir: str
    agent: str
    domain: str  # the domain's name
    domain_spec: str  # what builds it again: make_domain(domain_spec)
    task: str | None  # a supervised (oracle) run's one task
    scored: ScoredModel
    dataset: str
    episodes: int
    seeds: list[int]
    tasks: dict[str, TaskResult]
    goals: dict[str, GoalResult]
    per_seed: list[dict[str, Any]]
    aggregate: dict[str, Any] | None
    config: dict[str, Any]
    versions: dict[str, str]
    created: str
    notes: list[str] = field(default_factory=list)
    pct_of_oracle_mean: float | None = None
    #: the first seed's rollout per prompt ("task:NAME" / "goal:NAME"); not saved
    rollouts: dict[str, Rollout] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the rollouts, as plain JSON-ready containers."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "rollouts"}


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---- one model, one seed ----------------------------------------------------------------
def prompt_seed(prompt: str, seed: int, purpose: int = 0) -> int:
    """The random seed of one prompt's reward labels (``purpose`` 0) or rollouts (1): a
    function of the prompt's name and the evaluation seed only, so a task scores the same
    whatever else is evaluated beside it, and evaluation seeds share no episode (episode
    ``e`` of a rollout seeded ``b`` starts from ``b + e``)."""
    return (zlib.crc32(f"{purpose}:{prompt}".encode()) + 1_000_003 * seed) % 2**31

@contextlib.contextmanager
def reward_errors(reward_fn: RewardFn) -> Iterator[None]:
    """An exception from a reward function (often the user's own) as one paragraph."""
    try:
        yield
    except (UserError, ValueError):
        raise  # ours, already in words (checked_rewards)
    except Exception as exc:
        raise UserError(f"the reward function {reward_fn!r} raised {type(exc).__name__}: {exc}") from exc

def label_samples(
    dataset: OfflineDataset, reward_fn: RewardFn, n: int, seed: int, history: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``n`` random dataset transitions labelled by ``reward_fn``
    (:meth:`~zsrl.data.OfflineDataset.labelled_sample`; ``history``: as histories) and the
    seconds the labelling took."""
    t0 = time.perf_counter()
    with reward_errors(reward_fn):
        obs, next_obs, rewards = dataset.labelled_sample(reward_fn, n, seed, history)
    return obs, next_obs, rewards, time.perf_counter() - t0


@torch.no_grad()
def rollout(
    model: Any,
    domain: Domain,
    z: torch.Tensor | None,
    episodes: int,
    seed: int,
    goal: np.ndarray | None = None,
    max_steps: int | None = None,
) -> Rollout:
    """Run ``episodes`` parallel episodes of ``π_z`` (the first episode of each env only),
    acting through a :class:`~zsrl.agents.policy.Policy` (held actions, histories).

    With ``goal`` and a model whose goal embedding depends on the state, ``z`` is
    re-inferred from the goal and the current observation at every step. In a partially
    observed variant (:mod:`zsrl.envs.pomdp`) the policy sees each observation through the
    domain's observer, drawn afresh every step from ``seed``; the rollout keeps the true ones.
    """
    with env_errors(domain, "while it was made"):
        envs = make_vector_env(domain, episodes, seed)
    device = model.device
    goal_t = None if goal is None else torch.as_tensor(goal, device=device, dtype=torch.float32)
    with env_errors(domain, "at reset"):
        obs, info = envs.reset(seed=seed)
    physics = info.get("physics")
    alive = np.ones(episodes, dtype=bool)
    keys = ("observation", "action", "next_observation", "physics", "next_physics", "alive")
    out: dict[str, list] = {k: [] for k in keys}
    observer, noise = domain.observer, torch.Generator(device=device).manual_seed(seed)
    seen_goal = goal_t if goal_t is None or observer is None else observer.goal(goal_t)
    policy = Policy(model, z=z, goal=seen_goal if model.goal_z_depends_on_obs else None)
    try:
        for t in range(max_steps or domain.episode_length):
            obs_t = torch.as_tensor(obs, device=device)
            action = policy.act(obs_t if observer is None else observer(obs_t, noise)).cpu().numpy()
            with env_errors(domain, f"at step {t} of an evaluation episode"):
                next_obs, _, term, trunc, info = envs.step(action)
            if not np.isfinite(next_obs).all():
                raise UserError(f"the environment of domain {domain.name!r} returned NaN or inf observations at "
                                f"step {t} of an evaluation episode; fix the environment (the policy acted on "
                                "finite ones)")
            done = term | trunc
            true_next, next_physics = reached_states(next_obs, info, done, "physics" in info)
            for key, value in zip(keys, (obs, action, true_next, physics, next_physics, alive.copy())):
                out[key].append(value)
            alive &= ~done
            obs, physics = next_obs, info.get("physics")
            if not alive.any():
                break
    finally:
        envs.close()
    stacked = {k: (np.stack(v) if v and v[0] is not None else None) for k, v in out.items()}
    return Rollout(seed=seed, **stacked)


#: parallel environments of one rollout at most: more episodes are rolled out chunk by chunk
ROLLOUT_CHUNK = 100


def rollout_chunks(
    model: Any, domain: Domain, z: torch.Tensor | None, episodes: int, seed: int, goal: np.ndarray | None = None,
    what: str = "",
) -> Iterator[Rollout]:
    """The ``episodes`` episodes as :func:`rollout` runs them (episode ``e`` from seed
    ``seed + e``), in chunks of at most :data:`ROLLOUT_CHUNK` parallel environments, so that
    memory stays bounded whatever ``episodes`` is; a progress bar shows when there are several."""
    with tqdm(total=episodes, unit="ep", desc=f"eval {what}", disable=episodes <= ROLLOUT_CHUNK,
              mininterval=1.0) as bar:
        for start in range(0, episodes, ROLLOUT_CHUNK):
            n = min(ROLLOUT_CHUNK, episodes - start)
            yield rollout(model, domain, z, n, seed=seed + start, goal=goal)
            bar.update(n)


def episode_returns(reward_fn: RewardFn, traj: Rollout, name: str = "the task") -> np.ndarray:
    """Sum of ``reward_fn`` over each episode's (alive) steps: ``(E,)``.

    Raises ValueError when the reward function returns NaN or inf on the rollout.
    """
    batch = traj.as_transitions()
    with reward_errors(reward_fn):
        rewards = np.asarray(reward_fn(batch), dtype=np.float64).reshape(traj.alive.shape)
    bad = ~np.isfinite(rewards) & traj.alive
    if bad.any():
        raise ValueError(
            f"the reward function of {name} returned NaN or inf on {int(bad.sum())} of "
            f"{int(traj.alive.sum())} steps of the evaluation rollouts (it was finite on the "
            "dataset states used to prompt); make it finite for every state the policy can reach"
        )
    return np.where(traj.alive, rewards, 0.0).sum(0)


def evaluate_tasks(
    model: Any,
    domain: Domain,
    dataset: OfflineDataset,
    tasks: list[str] | Mapping[str, RewardFn],
    *,
    episodes: int = 10,
    reward_samples: int | None = None,
    seed: int = 0,
    rollouts: dict[str, Rollout] | None = None,
) -> dict[str, dict[str, Any]]:
    """Reward-prompted zero-shot returns per task (see the module docstring).

    ``rollouts``, if given, receives each task's rollout as ``"task:NAME"`` (for pictures).
    """
    fns = tasks if isinstance(tasks, Mapping) else {t: task_reward_fn(domain, t) for t in tasks}
    n = reward_samples or model.inference_samples
    results = {}
    for name, fn in fns.items():
        obs, next_obs, rewards, label_time = label_samples(dataset, fn, n, prompt_seed(f"task:{name}", seed),
                                                           model.prompt_history)
        dev = model.device
        z = model.finite_prompt(model.infer_z_from_transitions(obs.to(dev), next_obs.to(dev), rewards.to(dev)),
                                rewards, f"the prompt of {name!r}")
        goal = domain.goal_of_task(name) if isinstance(name, str) else None
        returns, goal_stats = [], []
        for traj in rollout_chunks(model, domain, z, episodes, prompt_seed(f"task:{name}", seed, 1),
                                   what=str(name)):
            if rollouts is not None and not returns:
                rollouts[f"task:{name}"] = traj  # the first episodes, for pictures
            returns.append(episode_returns(fn, traj, repr(name)))
            if goal is not None:
                goal_stats.append(episode_goal_stats(domain, traj, domain.goal(goal)))
        returns = np.concatenate(returns)
        results[name] = {
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()),
            "returns": returns.tolist(),
            "reward_samples": int(next_obs.shape[0]),
            "label_seconds": round(label_time, 4),
            "z": z.squeeze(0).cpu().tolist(),
        }
        if goal is not None:
            results[name]["goal"] = goal_metrics(domain, goal_stats)
    return results


def episode_goal_stats(domain: Domain, traj: Rollout, goal: np.ndarray) -> dict[str, np.ndarray]:
    """Per episode of a rollout: reached (the domain's success rule), final and closest
    distance to ``goal``, steps within it and steps taken."""
    alive = traj.alive
    last = alive.sum(0) - 1  # index of each env's last transition
    dist = np.asarray(domain.goal_distance(traj.next_observation, goal))  # (T, E)
    within = (dist <= domain.goal_threshold) & alive
    return {"success": domain.goal_success(dist, alive), "final": dist[last, np.arange(alive.shape[1])],
            "min": np.where(alive, dist, np.inf).min(0), "within": within.sum(0), "steps": alive.sum(0)}


def goal_metrics(domain: Domain, stats: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Success rate (the domain's rule), the fraction of episodes that ever came within the
    goal, mean final / closest distance and time within the goal over the episodes of one or
    more rollouts (:func:`episode_goal_stats`), and success under the domain's reference dwell
    rule where it has one; ``steps_within`` per episode lets any other dwell rule be scored
    from results.json."""
    s = {k: np.concatenate([part[k] for part in stats]) for k in stats[0]}
    reference = domain.reference_goal_dwell_steps
    return {
        "success": float(s["success"].mean()),
        "reference_success": None if reference is None else float((s["within"] >= reference).mean()),
        "reached": float((s["within"] > 0).mean()),
        "final_distance": float(s["final"].mean()),
        "min_distance": float(s["min"].mean()),
        "time_within": float(s["within"].sum() / max(int(s["steps"].sum()), 1)),
        "threshold": float(domain.goal_threshold),
        "steps_within": [int(n) for n in s["within"]],
    }


def evaluate_goals(
    model: Any,
    domain: Domain,
    goals: list[str],
    *,
    episodes: int = 10,
    seed: int = 0,
    rollouts: dict[str, Rollout] | None = None,
) -> dict[str, dict[str, Any]]:
    """Goal-prompted success rate and distances per named goal."""
    results = {}
    for name in goals:
        goal = domain.goal(name)
        seen = torch.as_tensor(goal, device=model.device)
        z = model.infer_z_from_goal(seen if domain.observer is None else domain.observer.goal(seen))
        stats = []
        for traj in rollout_chunks(model, domain, z, episodes, prompt_seed(f"goal:{name}", seed, 1), goal,
                                   what=f"goal {name}"):
            if rollouts is not None and not stats:
                rollouts[f"goal:{name}"] = traj  # the first episodes, for pictures
            stats.append(episode_goal_stats(domain, traj, goal))
        results[name] = goal_metrics(domain, stats)
    return results


def task_reward_fn(domain: Domain, name: str) -> RewardFn:
    """The batched reward function of the domain's task ``name`` (one of ``all_tasks``,
    validated now, not later)."""
    if name not in domain.all_tasks:
        domain.reward(name, None)  # raises UnknownTaskError listing the domain's tasks
    return lambda batch: domain.reward(name, batch)


def user_reward_function(spec: str) -> RewardFn:
    """Import ``module:function``, a reward ``f(obs, action, next_obs) -> (N,)`` over numpy batches."""
    try:
        fn = import_object(spec)
    except UserError as exc:
        raise UserError(f"--task {spec!r}: {exc}") from None
    if not callable(fn):
        raise UserError(f"--task {spec!r} is not a function")
    return reward_from_arrays(fn)


# ---- a run directory ----------------------------------------------------------------------
def load_scored_model(
    run_dir: Path, domain: Domain, device: torch.device, total_steps: int
) -> tuple[Model, ScoredModel, list[str]]:
    """The run's final model, else its last complete checkpoint; what was loaded; notes.

    A final ``model/`` that cannot be loaded (an interrupted write) falls back to the
    checkpoint, and the notes say so; an unfinished run (no ``model/``) scores its checkpoint.
    """
    notes: list[str] = []
    final = find_final_model(run_dir)
    if final is not None:
        try:
            model = load_model_dir(final, device=device)
            step = int(read_manifest(final).get("step", total_steps)) if is_complete(final) else total_steps
            scored = ScoredModel("final model", str(final), step, total_steps)
            return check_model_fits_domain(model, domain, run_dir), scored, notes
        except CheckpointError as exc:
            notes.append(f"the final model is incomplete or unreadable ({exc}); scored the last "
                         "complete checkpoint instead")
    elif (run_dir / FINAL_MODEL).exists():
        notes.append(f"the final model in {run_dir / FINAL_MODEL} is incomplete (its write was "
                     "interrupted); scored the last complete checkpoint instead")
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        problem = f" ({notes[0]})" if notes else ""
        raise CheckpointError(
            f"{run_dir} has no usable trained model ({FINAL_MODEL}/ or {CHECKPOINT}/){problem}; "
            "train one with `zsrl train` or resume the run with `zsrl train --resume`"
        )
    model = load_model_dir(checkpoint, device=device)
    scored = ScoredModel("checkpoint", str(checkpoint), int(read_manifest(checkpoint).get("step", 0)),
                         total_steps)
    if not notes:
        notes.append(f"the run is unfinished (no {FINAL_MODEL}/): scored its checkpoint at step "
                     f"{scored.step:,} of {total_steps:,}")
    return check_model_fits_domain(model, domain, run_dir), scored, notes


def evaluate_run(
    run_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    user_tasks: Sequence[str] = (),
    goals: Sequence[str] = (),
    episodes: int = 10,
    reward_samples: int | None = None,
    seeds: Sequence[int] = (0,),
    device: str = "auto",
    dataset: OfflineDataset | str | Path | None = None,
    domain: str | None = None,
) -> Evaluation:
    """Evaluate a run directory on domain tasks, user reward functions and goals.

    The prompts label states of the run's dataset (``dataset``: that dataset, already loaded,
    or its folder where it moved). ``domain``: another variant of the run's domain to
    evaluate in (:mod:`zsrl.envs.pomdp`, e.g. ``walker+dynamics=2``); the run's by default.

    ``tasks=None`` means every task of the domain, unless only user reward functions are
    asked for; goals (``["all"]`` for every goal of the domain) are evaluated as well as the
    tasks. A supervised (oracle) run is evaluated on the task it was trained for only.
    The rollouts of the first seed are kept in ``Evaluation.rollouts``.
    """
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    if not seeds:
        raise UserError("give at least one evaluation seed")
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", f"run {run_dir}")
    cfg = run_config_from_dict(config, source=f"run {run_dir}")
    run = read_json(run_dir / "run.json", f"run {run_dir}")
    spec, base = domain or cfg.domain, split_variant(cfg.domain)[0]
    if split_variant(spec)[0] != base:
        raise UserError(f"--domain {spec!r} is not a variant of the run's domain {cfg.domain!r}; a run is evaluated "
                        f"on its own domain, e.g. --domain {base}+dynamics=1.5")
    domain = make_domain(spec, source=None if spec != cfg.domain else f"run {run_dir}")
    dev = resolve_device(device)
    oracle = agent_class(cfg.agent.name, source=f"run {run_dir}").needs_task
    if oracle:  # a supervised oracle knows one task only
        asked = [t for t in tasks or [] if t != cfg.task] + list(user_tasks) + list(goals)
        if asked:
            raise UserError(f"run {run_dir} is a {cfg.agent.name} oracle trained on the task {cfg.task!r}: it "
                            f"acts on that task only and cannot be prompted with {', '.join(asked)}")
        tasks, user_tasks, goals = [cfg.task], [], []
    elif tasks is None:
        tasks = [] if user_tasks else list(domain.tasks)
    fns: dict[str, RewardFn] = {name: task_reward_fn(domain, name) for name in tasks}
    fns.update({spec: user_reward_function(spec) for spec in user_tasks})
    goals = list(domain.goals) if list(goals) == ["all"] else list(goals)
    if not fns and not goals:
        raise UserError(f"nothing to evaluate: no task and no goal asked for (domain {domain.name!r} has the "
                        f"tasks {', '.join(domain.tasks)}{' and goals: --goals all' if domain.goals else ''})")
    if len(set(seeds)) < len(seeds):
        raise UserError(f"the evaluation seeds {list(seeds)} repeat one; each seed counts once")
    for g in goals:
        domain.goal(g)  # validates the name before any work
    model, scored, notes = load_scored_model(run_dir, domain, dev, cfg.train.steps)
    if isinstance(dataset, OfflineDataset):
        dataset = dataset.to(dev)
    else:
        path = run_dataset(run_dir, run, dataset, f"evaluate with `zsrl eval {run_dir} --dataset NEW_PLACE`")
        dataset = OfflineDataset.load(path, device=dev, domain=domain.name)
    if domain.observer is not None:  # prompts read the dataset as the agent saw it in training
        dataset = dataset.seen_through(domain.observer, cfg.train.seed)

    per_seed: list[dict[str, Any]] = []
    rollouts: dict[str, Rollout] = {}
    for seed in seeds:
        keep = rollouts if seed == seeds[0] else None
        try:
            task_results = evaluate_tasks(model, domain, dataset, fns, episodes=episodes,
                                          reward_samples=reward_samples, seed=seed, rollouts=keep)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        goal_results = evaluate_goals(model, domain, goals, episodes=episodes, seed=seed, rollouts=keep)
        per_seed.append({"seed": seed, "tasks": task_results, "goals": goal_results})
    if read_json(run_dir / "run.json", f"run {run_dir}") != run:
        raise CheckpointError(
            f"run {run_dir} was replaced (trained anew with --overwrite) while it was being evaluated; "
            "this evaluation would mix the two runs and is not written. Evaluate it again."
        )
    return Evaluation(
        run_dir=str(run_dir), agent=cfg.agent.name, domain=domain.name, domain_spec=spec,
        task=cfg.task if oracle else None, scored=scored, dataset=run["dataset"], episodes=episodes, seeds=list(seeds),
        tasks={name: _task_over_seeds(name, per_seed) for name in fns},
        goals={name: _goal_over_seeds(name, per_seed) for name in goals},
        per_seed=per_seed, config=config,
        aggregate=_aggregate(per_seed, [n for n in fns if domain.goal_of_task(n) is None]),
        versions=versions(), created=now_iso(), notes=notes, rollouts=rollouts,
    )


def _task_over_seeds(name: str, per_seed: list[dict[str, Any]]) -> TaskResult:
    runs = [s["tasks"][name] for s in per_seed]
    returns = [r for run in runs for r in run["returns"]]
    return TaskResult(
        mean_return=float(np.mean(returns)),
        returns=returns,
        per_seed_mean=[run["mean_return"] for run in runs],
        reward_samples=runs[0]["reward_samples"],
        label_seconds=float(np.mean([run["label_seconds"] for run in runs])),
        goal=_mean_goal([run["goal"] for run in runs]) if "goal" in runs[0] else None,
    )


def _goal_over_seeds(name: str, per_seed: list[dict[str, Any]]) -> GoalResult:
    return _mean_goal([s["goals"][name] for s in per_seed])


def _mean_goal(runs: list[dict[str, Any]]) -> GoalResult:
    values = {f.name: [run.get(f.name) for run in runs] for f in fields(GoalResult)}
    return GoalResult(**{name: None if None in v else float(np.mean(v)) for name, v in values.items()})


def _aggregate(per_seed: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any] | None:
    if not tasks:
        return None
    scores = np.array([[s["tasks"][t]["mean_return"] for t in tasks] for s in per_seed])  # (seeds, tasks)
    return aggregate(scores)


# ---- oracle -------------------------------------------------------------------------------
def pct_of_oracle(value: float, oracle: float) -> float | None:
    """``100 · value / oracle``, or None when the oracle return is below MIN_ORACLE_RETURN."""
    return 100.0 * value / oracle if oracle >= MIN_ORACLE_RETURN else None


def compare_with_oracle(
    evaluation: Evaluation, oracle_runs: Sequence[str | Path], device: str = "auto"
) -> None:
    """Evaluate supervised oracle runs (same episodes and seeds) and fill in "% of oracle"."""
    for oracle_dir in oracle_runs:
        oracle = evaluate_run(oracle_dir, episodes=evaluation.episodes, seeds=evaluation.seeds,
                              device=device)
        if oracle.task is None:
            raise UserError(f"--oracle {oracle_dir} is a {oracle.agent} run, not a supervised oracle (td3 trained "
                            "on a task's reward); '% of oracle' needs one")
        for task, r in oracle.tasks.items():
            mine = evaluation.tasks.get(task)
            if mine is not None:
                mine.oracle_return = r.mean_return
                mine.oracle = f"{oracle.agent} run {oracle_dir} (same dataset, task reward)"
                mine.pct_of_oracle = pct_of_oracle(mine.mean_return, r.mean_return)
    pct = [r.pct_of_oracle for r in evaluation.tasks.values() if r.pct_of_oracle is not None]
    evaluation.pct_of_oracle_mean = float(np.mean(pct)) if pct else None
