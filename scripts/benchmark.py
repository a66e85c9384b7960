"""The benchmark protocol: collect → train → evaluate, agents × domains × training seeds.

    python scripts/benchmark.py --agents fb fre --domains point_mass_maze walker \\
        --seeds 0,1,2 --out bench [--steps 20000] [--oracle] [--episodes 5]
    python scripts/benchmark.py --gpu --agents fb --domains walker cheetah quadruped \\
        point_mass_maze --seeds 0,1,2 --oracle --jobs 4 --out bench_gpu

For each domain a reward-free dataset is collected once, as ``zsrl collect`` collects it
(:class:`zsrl.collection.CollectorConfig`: the domain's collector, sticky random for the maze and
RND elsewhere, unless ``--collector``; ``--transitions``) and cached under ``OUT/data``. Each agent trains one run per training
seed (``--seeds``) of its preset — ``configs/<agent>/<domain>_cpu.yaml`` by default, the
published size ``configs/<agent>/<domain>.yaml`` on CUDA with ``--gpu`` — is prompted with
``--reward-samples`` labelled dataset states per task (and with every goal of the domain),
and is rolled out for ``--episodes`` episodes. With ``--oracle`` an offline TD3 is trained
per task and seed on the same dataset with the task reward and the same update budget;
"% of oracle" divides by its mean return (tasks where the oracle scores below
``MIN_ORACLE_RETURN`` are left out). For domains with goals, the oracle also trains one TD3
per goal on its dense task ``dense_<goal>`` (reward ``−distance``) and its rollouts are
scored by the same success rule as the agents' goal prompts. ``--jobs N`` trains N runs at once (they share the
GPU; on a CPU they split its cores).

**Partial observability** (:mod:`zsrl.envs.pomdp`): a domain may be a variant,
``point_mass_maze+flickering`` or ``walker+noisy``; its data is collected on the domain itself
(with the variant's dynamics, if it changes them: datasets keep the true observations), and
each agent trains its domain preset with ``domain=VARIANT``. ``--markov`` adds FB trained on
the true state on the same data ("fb (true state)") and each agent's mean return as a
percentage of it ("% true FB", the paper's measure)::

    python scripts/benchmark.py --agents fb fbstack fbm --markov --seeds 0,1,2 --out bench_pomdp \
        --domains point_mass_maze+flickering point_mass_maze+occluded walker+noisy walker+flickering

**On a cluster** ``--submitit slurm`` submits every job to Slurm through submitit
(``pip install 'zsrl[slurm]'``) and collects the results into the same tables;
``--procs-per-job N`` makes each job a data-parallel run of N processes (one per GPU, on one
node; :mod:`zsrl.distributed`), and ``--slurm KEY=VALUE`` passes submitit's parameters
(``slurm_partition=gpu``, ``timeout_min=600``, ``slurm_account=…``). ``--submitit local``
runs the same jobs as local processes (submitit's local executor: a test of the setup, or a
machine without Slurm). Submitted jobs cache and resume exactly as local ones, so a
preempted or timed-out job is resumed by running the command again.

**Rerunning the same command continues an interrupted one**: a job's result is cached in its
run directory (``benchmark_result.json``) and reused, a run with a checkpoint resumes from it
(training stops with a checkpoint on SIGTERM or Ctrl-C), a trained one is only evaluated. So
the GPU protocol can be split over time-limited commands, e.g. on a machine that allows 10
minutes per command, ``timeout -s TERM 540 python scripts/benchmark.py --gpu ...`` repeated
until it prints the tables (``timeout`` signals the whole process group, workers included).

Per task: the mean over training seeds of each run's mean return, with a 95% percentile
bootstrap CI over seeds; per agent: IQM over (seed, task) scores with a stratified
bootstrap CI (Agarwal et al. 2021, :mod:`zsrl.stats`). Goal success is tabled under zsrl's
rule and, for domains whose goals come with another protocol's rule (walker and cheetah:
kvfrans/fre's, more than 100 of 1000 steps within the goal), under that rule too. ``OUT/benchmark.json`` records every
seed's returns and goal successes, per domain with the protocol it ran under; domains that an
earlier invocation wrote to the same ``OUT`` are kept (walker with three seeds, then the other
domains with one, make one report). ``OUT/benchmark.png`` draws the means.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsrl import distributed, plots
from zsrl.checkpoint import find_final_model
from zsrl.collection import CollectorConfig, collect_to_disk
from zsrl.config import RunConfig, load_run_config, run_config_from_dict
from zsrl.data import OfflineDataset
from zsrl.envs import make_domain
from zsrl.envs.base import DENSE_PREFIX
from zsrl.envs.pomdp import SEPARATOR, split_variant
from zsrl.errors import LockedError, UserError
from zsrl.evaluation import evaluate_run, pct_of_oracle
from zsrl.stats import aggregate, bootstrap_ci
from zsrl.storage import atomic_write_json, writer_lock
from zsrl.training import resume_run, start_run
from zsrl.utils import versions

#: a finished job's result, cached in its run directory so that a rerun skips it
RESULT_FILE = "benchmark_result.json"
#: ``--gpu``: the published presets on CUDA, for this many updates unless ``--steps`` says
GPU_STEPS = 300_000


@dataclass
class Job:
    """One training run and its evaluation (picklable: runs in a worker process)."""

    preset: str
    data: str
    run_dir: str
    seed: int  # training seed; the run is evaluated with it too
    overrides: list[str]
    episodes: int
    reward_samples: int | None
    goals: bool
    progress: bool
    results: dict[str, Any] = field(default_factory=dict)


def job_spec(job: Job) -> dict[str, Any]:
    """What a job's result depends on (its cache key in ``RUN_DIR/RESULT_FILE``)."""
    keys = ("preset", "data", "seed", "overrides", "episodes", "reward_samples", "goals")
    return {k: getattr(job, k) for k in keys}


def _as_stored(cfg: RunConfig) -> dict[str, Any]:
    """A run config as ``config.json`` stores it, progress bars aside."""
    stored = json.loads(json.dumps(asdict(cfg), default=str))
    stored["train"].pop("progress", None)
    return stored


def _resolved_config(job: Job) -> dict[str, Any]:
    return _as_stored(load_run_config(job.preset, [f"train.seed={job.seed}", *job.overrides]))


def _same_run(job: Job, run_dir: Path) -> bool:
    """Whether ``run_dir`` is this job's run, started on its dataset with its resolved config.
    The stored config is read as training reads it, so a run from before a field was added
    (which then trained as its default) is still the same run."""
    try:
        cfg = _as_stored(run_config_from_dict(json.loads((run_dir / "config.json").read_text())))
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError, UserError):
        return False
    return cfg == _resolved_config(job) and run.get("dataset") == str(Path(job.data).resolve())


def _training_seconds(metrics: list[dict[str, str]]) -> float:
    """Training time from ``metrics.csv``: its ``time`` restarts at 0 in each resumed segment,
    so the total is the sum of every segment's last value."""
    total = last = 0.0
    for row in metrics:
        t = float(row["time"])
        if t < last:
            total += last
        last = t
    return total + last


def run_job(job: Job) -> Job:
    """Train (or resume, or reuse) the job's run, evaluate it, cache the result in the run.

    A run directory left by an interrupted benchmark is resumed from its checkpoint when it is
    the same job (same dataset, same resolved config); one with a final model is only
    evaluated; one with ``RESULT_FILE`` for the same job is not touched. Anything else there is
    replaced."""
    run_dir = Path(job.run_dir)
    cached = run_dir / RESULT_FILE
    try:
        saved = json.loads(cached.read_text())
    except (OSError, ValueError):  # none yet (or unreadable): train / evaluate again
        saved = {}
    if isinstance(saved, dict) and saved.get("job") == job_spec(job):
        job.results = saved["results"]
        return job
    if not _same_run(job, run_dir):
        cached.unlink(missing_ok=True)  # the result of another job, which the new run replaces
        start_run(job.preset, job.data, run_dir,
                  [f"train.seed={job.seed}", *job.overrides, f"train.progress={str(job.progress).lower()}"],
                  overwrite=True)
    elif find_final_model(run_dir) is None:
        print(f"resuming {run_dir}", flush=True)
        resume_run(run_dir)
    if not distributed.is_main():  # a data-parallel job's other ranks: rank 0 evaluates
        return job
    with (run_dir / "metrics.csv").open() as f:
        metrics = list(csv.DictReader(f))
    ups = [float(r["updates_per_s"]) for r in metrics]
    wall = _training_seconds(metrics)
    ev = evaluate_run(job.run_dir, episodes=job.episodes, seeds=[job.seed], reward_samples=job.reward_samples,
                      goals=["all"] if job.goals else [])
    reached = dict(ev.goals)
    reached |= {t.removeprefix(DENSE_PREFIX): r.goal for t, r in ev.tasks.items() if r.goal is not None}
    job.results = {
        "tasks": {t: r.mean_return for t, r in ev.tasks.items()},
        "goals": {g: r.success for g, r in reached.items()},
        "reference_goals": {g: r.reference_success for g, r in reached.items() if r.reference_success is not None},
        "reward_samples": next(iter(ev.tasks.values())).reward_samples if ev.tasks else None,
        "train_seconds": wall, "updates_per_s": float(np.median(ups)),
    }
    atomic_write_json(cached, {"job": job_spec(job), "results": job.results})
    return job


def _share_cores(threads: int) -> None:
    """Worker initialiser: the machine's cores split between the workers (each torch process
    would otherwise take them all, and the oversubscribed runs crawl)."""
    import torch

    torch.set_num_threads(threads)


def run_jobs(jobs: list[Job], workers: int) -> list[Job]:
    if workers <= 1:
        return [run_job(j) for j in jobs]
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_share_cores, initargs=(threads,)) as pool:
        return list(pool.map(run_job, jobs))


def run_submitted_job(job: Job) -> Job:
    """One task of a submitit job: joins the job's other tasks as ranks of one data-parallel
    run (the environment ``torchrun`` would set, from submitit's), then :func:`run_job`."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        port = 20_000 + int(hashlib.sha256(str(env.job_id).encode()).hexdigest(), 16) % 20_000
        os.environ.update(MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(port), WORLD_SIZE=str(env.num_tasks),
                          RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank))
    try:
        return run_job(job)
    finally:
        distributed.shutdown()


def submit_jobs(jobs: list[Job], cluster: str, folder: Path, procs: int, gpu: bool, params: list[str]) -> list[Job]:
    """Run ``jobs`` through submitit (``cluster``: ``slurm`` or ``local``), ``procs`` tasks each;
    returns them with their results."""
    try:
        import submitit
    except ImportError:
        raise SystemExit("--submitit needs submitit: pip install 'zsrl[slurm]'") from None
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(nodes=1, tasks_per_node=procs, timeout_min=24 * 60, name="zsrl-benchmark",
                               **({"gpus_per_node": procs} if gpu else {}))
    extra = {}
    for item in params:
        key, _, value = item.partition("=")
        extra[key] = int(value) if value.isdigit() else value
    executor.update_parameters(**extra)
    with executor.batch():
        futures = [executor.submit(run_submitted_job, job) for job in jobs]
    print(f"submitted {len(futures)} jobs ({cluster}; logs in {folder})", flush=True)
    return [f.results()[0] for f in futures]  # rank 0's: the task that evaluated


def make_job(args: argparse.Namespace, data: Path, run_dir: Path, preset: str, seed: int,
             extra: list[str], goals: bool) -> Job:
    overrides = [f"train.device={args.device}", *extra]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    return Job(preset, str(data), str(run_dir), seed, overrides, args.episodes, args.reward_samples, goals,
               not args.quiet)


def true_state(spec: str) -> str:
    """A variant's domain with its dynamics but without its observation settings: where its
    data is collected and where FB on the true state trains (``walker+noisy+dynamics=2`` →
    ``walker+dynamics=2``)."""
    base, settings = split_variant(spec)
    return SEPARATOR.join([base, *[s for s in settings if s.startswith("dynamics=")]])


def dataset_for(domain_name: str, args: argparse.Namespace) -> Path:
    domain = make_domain(domain_name)
    cfg = CollectorConfig(collector=args.collector, device=args.device)  # the defaults of `zsrl collect`
    collector = cfg.collector_for(domain)
    name = "sticky{}-{}r{:g}".format(*cfg.sticky()) if collector == "sticky" else collector
    path = args.out / "data" / f"{domain_name}_{name}_e{cfg.num_envs}_{args.num_transitions}_s{args.data_seed}"
    if not path.exists():
        collect_to_disk(domain, cfg, args.num_transitions, path, seed=args.data_seed, progress=not args.quiet)
    else:
        OfflineDataset.load(path, domain=domain_name)  # validate the cache
    return path


def labelled(jobs: list[Job], label: str) -> list[Job]:
    """The jobs whose run directory is ``LABEL_s<seed>`` (an agent's, or FB's on the true state)."""
    return [j for j in jobs if Path(j.run_dir).name.rsplit("_s", 1)[0] == label]


def over_seeds(values: list[float], key: str = "mean") -> dict[str, Any]:
    """Mean over training seeds, every seed's value, and a 95% bootstrap CI (two seeds or more)."""
    col = np.asarray(values, np.float64)[:, None]
    return {key: float(col.mean()), "per_seed": col[:, 0].tolist(),
            "ci": bootstrap_ci(col, np.mean) if len(values) > 1 else None}


def summarise(jobs: list[Job], tasks: list[str]) -> dict[str, Any]:
    """Per-task means and CIs over training seeds, IQM over (seed, task), goal successes."""
    scores = np.array([[j.results["tasks"][t] for t in tasks] for j in jobs])  # (seeds, tasks)
    return {
        "tasks": {t: over_seeds(scores[:, i].tolist()) for i, t in enumerate(tasks)},
        "goals": {g: over_seeds([j.results["goals"][g] for j in jobs], "success")
                  for g in jobs[0].results["goals"]},
        "reference_goals": {g: over_seeds([j.results["reference_goals"][g] for j in jobs], "success")
                            for g in jobs[0].results.get("reference_goals", {})
                            if all(g in j.results.get("reference_goals", {}) for j in jobs)},
        "aggregate": aggregate(scores),
        "seeds": [j.seed for j in jobs],
        "reward_samples": jobs[0].results["reward_samples"],
        "train_seconds": float(np.mean([j.results["train_seconds"] for j in jobs])),
        "updates_per_s": float(np.median([j.results["updates_per_s"] for j in jobs])),
    }


def _earlier_domains(path: Path) -> dict[str, Any]:
    """The domains an earlier invocation wrote to ``OUT/benchmark.json`` (each with the
    protocol it ran under), kept next to this one's: e.g. walker with three seeds, then the
    other domains with one, into one report."""
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text()).get("domains", {})
    except (OSError, ValueError, AttributeError):
        print(f"note: {path} is unreadable; it is replaced by this run's domains")
        return {}
    return {d: e for d, e in earlier.items() if isinstance(e, dict) and "protocol" in e}


def write_report(path: Path, domains: dict[str, Any]) -> dict[str, Any]:
    """Write ``OUT/benchmark.json``: this invocation's ``domains`` over those the file holds
    *now* (read again at each write), so invocations running at once into one OUT keep each
    other's domains; they take turns through the file's writer lock, so none writes between
    another's read and its write."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with writer_lock(path, "the benchmark report"):
                report = {"domains": {**_earlier_domains(path), **domains}, "versions": versions()}
                atomic_write_json(path, report)
                return report
        except LockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", nargs="+", default=["fb"])
    p.add_argument("--domains", nargs="+", default=["point_mass_maze", "walker"])
    p.add_argument("--collector", help="override the per-domain default collector")
    p.add_argument("--transitions", dest="num_transitions", type=int, help="default: 200000, 100000 with --gpu")
    p.add_argument("--steps", type=int, help=f"override every preset's train.steps (--gpu: {GPU_STEPS})")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--reward-samples", type=int, default=None, help="default: each agent's inference_samples")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (each run is evaluated with its seed)")
    p.add_argument("--data-seed", type=int, default=0, help="collection seed")
    p.add_argument("--oracle", action="store_true", help="train a TD3 oracle per task and seed for '%% of oracle'")
    p.add_argument("--gpu", action="store_true", help=f"published-size presets on CUDA (default budget {GPU_STEPS} updates)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (worker processes)")
    p.add_argument("--submitit", choices=["slurm", "local"], help="submit the jobs through submitit instead")
    p.add_argument("--procs-per-job", type=int, default=1, help="with --submitit: data-parallel processes per run")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit parameter, e.g. slurm_partition=gpu or timeout_min=600 (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="AGENT:KEY=VALUE",
                   help="a config override for one agent, e.g. fre:agent.encoder_steps=2000 (repeatable)")
    p.add_argument("--markov", action="store_true",
                   help="for partially observed variants: also FB on the true state, and '%% true FB'")
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds takes comma-separated integers such as 0,1,2; got {args.seeds!r}")
    args.num_transitions = args.num_transitions or (100_000 if args.gpu else 200_000)
    args.steps = args.steps or (GPU_STEPS if args.gpu else None)
    args.device = "cuda" if args.gpu else "cpu"
    size = "" if args.gpu else "_cpu"

    protocol = vars(args) | {"out": str(args.out), "seeds": seeds}
    measured: dict[str, Any] = {}  # this invocation's domains; the report adds earlier ones at each write
    report: dict[str, Any] = {}
    for domain_name in args.domains:
        collected_on = true_state(domain_name)
        data = dataset_for(collected_on, args)
        domain = make_domain(domain_name)
        tasks = list(domain.tasks)
        runs = args.out / "runs" / domain_name
        variant = [f"domain={domain_name}"] if domain.variant else []

        def settings(agent: str) -> list[str]:
            return [o.split(":", 1)[1] for o in args.set if o.split(":", 1)[0] == agent]

        jobs = [make_job(args, data, runs / f"{a}_s{s}", f"{a}/{domain.name}{size}", s, [*variant, *settings(a)],
                         bool(domain.goals))
                for a in args.agents for s in seeds]
        markov = args.markov and domain.observer is not None
        if markov:
            jobs += [make_job(args, data, runs / f"fb_true_state_s{s}", f"fb/{domain.name}{size}", s,
                              [f"domain={collected_on}", *settings("fb")], bool(domain.goals)) for s in seeds]
        if args.oracle:
            jobs += [make_job(args, data, runs / f"td3_{t}_s{s}", f"td3/{domain_name}{size}", s, [f"task={t}"], False)
                     for t in [*tasks, *domain.goal_tasks] for s in seeds]
        done = (submit_jobs(jobs, args.submitit, args.out / "submitit", args.procs_per_job, args.gpu, args.slurm)
                if args.submitit else run_jobs(jobs, args.jobs))

        entry: dict = {"protocol": protocol, "dataset": str(data), "tasks": tasks, "agents": {},
                       "goal_rules": goal_rules(domain)}
        oracle: dict[str, float] = {}
        if args.oracle:
            oracle = {t: float(np.mean([j.results["tasks"][t] for j in done if j.preset.startswith("td3/")
                                        and f"task={t}" in j.overrides])) for t in tasks}
            entry["oracle"] = {"agent": "td3", "returns": oracle}
        true_fb = summarise(labelled(done, "fb_true_state"), tasks) if markov else None
        for a in args.agents:
            summary = summarise(labelled(done, a), tasks)
            pct = [q for t in tasks if t in oracle
                   and (q := pct_of_oracle(summary["tasks"][t]["mean"], oracle[t])) is not None]
            summary["pct_of_oracle"] = float(np.mean(pct)) if pct else None
            if true_fb is not None:
                summary["pct_of_true_fb"] = 100 * _task_mean(summary) / _task_mean(true_fb)
            entry["agents"][a] = summary
        if true_fb is not None:
            entry["agents"]["fb (true state)"] = true_fb
        if oracle:
            dense = {g: [j.results for j in done if f"task={DENSE_PREFIX}{g}" in j.overrides] for g in domain.goals}
            entry["agents"]["td3 (oracle)"] = {
                "tasks": {t: {"mean": oracle[t], "ci": None} for t in tasks},
                "goals": {g: over_seeds([r["goals"][g] for r in rs], "success") for g, rs in dense.items() if rs},
                "reference_goals": {g: over_seeds([r["reference_goals"][g] for r in rs], "success")
                                    for g, rs in dense.items()
                                    if rs and all(g in r.get("reference_goals", {}) for r in rs)},
                "aggregate": None}
        measured[domain_name] = entry
        print_table(domain_name, entry)
        report = write_report(args.out / "benchmark.json", measured)
    table = {d: {a: {t: v["mean"] for t, v in r["tasks"].items()} for a, r in e["agents"].items()}
             for d, e in report["domains"].items()}
    plots.benchmark_bars(table, args.out / "benchmark.png")
    print(f"\nwrote {args.out / 'benchmark.json'} and {args.out / 'benchmark.png'}")


def goal_rules(domain: Any) -> dict[str, str]:
    """The goal tables a domain gets, each with its success rule in words: zsrl's
    (:meth:`~zsrl.envs.Domain.goal_success`) and, where the domain states one, its reference's
    (``reference_goal_dwell_steps``, e.g. kvfrans/fre on walker: more than 100 steps within)."""
    dwell = domain.goal_dwell_steps
    rules = {"goals": f"zsrl's rule (at least {dwell} steps within the goal)" if dwell
             else "zsrl's rule (the final state within the goal)"}
    if domain.reference_goal_dwell_steps is not None:
        rules["reference_goals"] = (f"the reference's rule (at least {domain.reference_goal_dwell_steps} "
                                    "steps within the goal)")
    return rules


def _task_mean(summary: dict[str, Any]) -> float:
    return float(np.mean([v["mean"] for v in summary["tasks"].values()]))


def _cell(v: dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    mean = f"{scale * v['mean' if 'mean' in v else 'success']:.{digits}f}"
    if not v.get("ci"):
        return mean
    lo, hi = v["ci"]
    return f"{mean} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def print_table(domain: str, entry: dict) -> None:
    """Markdown tables: returns per task (mean over seeds [95% CI]) and goal success (%)."""
    tasks = entry["tasks"]
    markov = any("pct_of_true_fb" in r for r in entry["agents"].values())
    head = ["agent", *tasks, "mean", "IQM [95% CI]", "% oracle", *(["% true FB"] if markov else []), "upd/s", "train s"]
    rows = []
    for agent, r in entry["agents"].items():
        agg = r.get("aggregate")
        rows.append([
            agent, *[_cell(r["tasks"][t]) for t in tasks],
            f"{np.mean([r['tasks'][t]['mean'] for t in tasks]):.1f}",
            "-" if agg is None else f"{agg['iqm']:.1f} [{agg['iqm_ci'][0]:.1f}, {agg['iqm_ci'][1]:.1f}]",
            "-" if r.get("pct_of_oracle") is None else f"{r['pct_of_oracle']:.0f}%",
            *([f"{r['pct_of_true_fb']:.0f}%" if "pct_of_true_fb" in r else "-"] if markov else []),
            "-" if "updates_per_s" not in r else f"{r['updates_per_s']:.0f}",
            "-" if "train_seconds" not in r else f"{r['train_seconds']:.0f}",
        ])
    print(f"\n## {domain} (dataset {entry['dataset']})\n")
    _markdown(head, rows)
    rules = entry.get("goal_rules", {"goals": "the domain's rule"})
    for key, rule in rules.items():
        goals = list(dict.fromkeys(g for r in entry["agents"].values() for g in r.get(key, {})))
        if goals:
            print(f"\ngoal success (%) on {domain}, {rule}:\n")
            _markdown(["agent", *goals], [[a, *[_cell(r[key][g], 100, 0) if g in r[key] else "-" for g in goals]]
                                          for a, r in entry["agents"].items() if r.get(key)])


def _markdown(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
