"""The ``zsrl`` command line.

    zsrl collect   --domain D [--collector random|sticky|rnd|sb3] --transitions N --out DIR
    zsrl data describe DIR
    zsrl data goals DIR [--count 5] [--out FILE]
    zsrl train     --config PRESET_OR_YAML --dataset DIR --out RUN_DIR [key=value ...]
    zsrl train     --agent fb --dataset DIR --out RUN_DIR [key=value ...]
    zsrl train     --resume RUN_DIR [train.steps=N]
    zsrl eval      RUN_DIR [--tasks a,b] [--goals all] [--episodes M] [--video] [--overwrite]
    zsrl presets | domains

User mistakes (a wrong path, a broken dataset, an unknown key) are printed as one
paragraph without a traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zsrl.errors import UserError

if TYPE_CHECKING:
    from zsrl.config import RunConfig

EXAMPLES = """\
quick start (point-mass maze, CPU, minutes): everything in one command
  zsrl pipeline --out runs/quickstart

or step by step:
  zsrl collect --domain point_mass_maze --transitions 200000 --out data/maze
  zsrl data describe data/maze
  zsrl train --config fb/point_mass_maze_cpu --dataset data/maze --out runs/fb_maze
  zsrl eval runs/fb_maze --goals all

run `zsrl COMMAND --help` for the options of each command.
"""


def _add_trust_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-plugins", action="store_true",
                   help="import the plug-in modules that the run, model or dataset names (their code runs); "
                   "by default only built-in, registered and installed plug-ins are")


def _add_collector_options(p: argparse.ArgumentParser) -> None:
    """The options of :class:`zsrl.collection.CollectorConfig`, with its defaults (one set for
    `zsrl collect` and `zsrl pipeline`)."""
    from zsrl.collection import COLLECTORS, CollectorConfig

    d = CollectorConfig()
    p.add_argument("--collector", choices=COLLECTORS, default=d.collector,
                   help="exploration policy: uniform random, sticky random (random actions held for a while), "
                   "RND (random network distillation) or a saved SB3 policy (default: the domain's, see `zsrl domains`)")
    hold, _, rest = d.sticky()
    p.add_argument("--hold", type=int, default=d.hold,
                   help=f"sticky collector: each action is held a random multiple of this many steps (default: {hold})")
    p.add_argument("--hold-max", type=int, default=d.hold_max, metavar="STEPS",
                   help="sticky collector: ... up to this many (default: ten times --hold)")
    p.add_argument("--rest", type=float, default=d.rest, metavar="P",
                   help=f"sticky collector: probability that a held action is zero (default: {rest:g})")
    p.add_argument("--episode-length", type=int, default=d.episode_length, metavar="STEPS",
                   help="steps per collected episode (default: the domain's collection episode length, "
                   "see `zsrl domains`; the maze's is 50000 so that random walks leave the start room)")
    p.add_argument("--num-envs", type=int, default=d.num_envs,
                   help=f"parallel environments (default: {d.num_envs}; the data depends on it)")
    p.add_argument("--async", dest="asynchronous", action="store_true", help="step environments in subprocesses")
    p.add_argument("--policy", help="sb3 collector: a stable-baselines3 model .zip")
    p.add_argument("--action-noise", type=float, default=d.action_noise,
                   help="sb3 collector: Gaussian action noise std")
    p.add_argument("--device", default=d.device, help="device of the RND explorer's networks (default: cpu)")


def _collector_config(args: argparse.Namespace):
    from zsrl.collection import CollectorConfig

    return CollectorConfig(
        collector=args.collector, hold=args.hold, hold_max=args.hold_max, rest=args.rest, num_envs=args.num_envs,
        asynchronous=args.asynchronous, episode_length=args.episode_length, policy=args.policy,
        action_noise=args.action_noise, device=args.device,
    )


def _add_collect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="collect a reward-free offline dataset",
        description="Collect reward-free transitions with parallel environments and save them "
        "as a dataset directory (written atomically).",
    )
    p.add_argument("--domain", required=True, help="built-in domain name, registered name or 'pkg.module:DomainClass'")
    _add_collector_options(p)
    p.add_argument("--transitions", dest="num_transitions", type=int, required=True,
                   help="number of transitions to collect")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a dataset directory")
    p.add_argument("--no-progress", action="store_true")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("describe", help="size, episodes, per-dimension ranges, coverage")
    d.add_argument("path")
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_trust_option(d)
    g = dsub.add_parser("goals", help="choose goal states from a dataset and write a goal file",
                        description="Choose COUNT goals from the dataset's reached states, one from each of "
                        "COUNT equal slices, and write them with the dataset's per-coordinate spread as a "
                        "goal file (zsrl.envs.goals) that a domain's goals_file can point at.")
    g.add_argument("path")
    g.add_argument("--count", type=int, default=5)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", help="goal file to write (default: the built-in goal file of the dataset's domain)")
    _add_trust_option(g)
    i = dsub.add_parser("import", help="bring a dataset of the field into zsrl's format",
                        description="Import ExORL episode folders (.npz files with observation, action, "
                        "discount and physics; the rewards are relabelled exactly from the physics state) or a "
                        "local Minari dataset (pip install 'zsrl[minari]').")
    i.add_argument("format", choices=["exorl", "minari"])
    i.add_argument("source", help="exorl: the folder of episode files; minari: the dataset id")
    i.add_argument("--domain", required=True, help="the domain the data was collected on, e.g. walker, or "
                   "gym:ENV_ID for any gymnasium env")
    i.add_argument("--out", required=True, help="the dataset folder to write")
    i.add_argument("--episodes", type=int, help="import the first N episode files (by name) only")
    i.add_argument("--overwrite", action="store_true", help="replace --out if it is a dataset directory")
    e = dsub.add_parser("export", help="write a zsrl dataset as a local Minari dataset")
    e.add_argument("path")
    e.add_argument("--minari-id", required=True, help="the Minari dataset id, e.g. zsrl/maze/sticky-v0")
    _add_trust_option(e)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain an agent on a dataset",
        description="Pretrain an agent. Overrides are dotted key=value pairs, e.g. "
        "agent.z_dim=50 train.steps=20000 train.device=cuda.",
    )
    p.add_argument("--config", help="preset name (see `zsrl presets`) or a YAML file")
    p.add_argument("--agent", help="instead of --config: the agent's generic preset (GPU size when "
                   "CUDA is available, else CPU size) on the dataset's own domain, e.g. --agent fb")
    p.add_argument("--dataset", help="dataset directory from `zsrl collect` (with --resume: the run's "
                   "dataset at a new place)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint; "
                   "with train.steps=N, train a run (finished or not) on to N updates")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a run directory")
    _add_trust_option(p)
    p.add_argument("overrides", nargs="*", help="key=value config overrides")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="zero-shot evaluation of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--tasks", help="comma-separated task names (default: all of the domain's tasks "
                   "unless --task is given; '' for none)")
    p.add_argument("--task", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="a reward function f(obs, action, next_obs) -> rewards written outside zsrl (repeatable)")
    p.add_argument("--goals", help="comma-separated goal names, or 'all' (evaluated as well as the tasks)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--reward-samples", type=int, default=None, help="dataset states labelled to infer z")
    p.add_argument("--seeds", default="0", help="comma-separated evaluation seeds")
    p.add_argument("--json", dest="json_path", help="write the results as JSON to this file")
    p.add_argument("--out", help="directory for results.json, report.md and plots")
    p.add_argument("--device", default="auto")
    p.add_argument("--dataset", help="the run's dataset, where it moved (it must be the same data)")
    p.add_argument("--domain", help="evaluate in another variant of the run's domain, e.g. walker+dynamics=2 "
                   "(see `zsrl domains`; default: the run's)")
    p.add_argument("--oracle", action="append", default=[], metavar="ORACLE_RUN_DIR",
                   help="a supervised run (configs/td3/...) on the same dataset; adds '%% of oracle' (repeatable)")
    p.add_argument("--video", action="store_true",
                   help="also film one evaluated episode per task and goal (needs rendering)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results already in --out (and the --json file)")
    _add_trust_option(p)


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="collect, pretrain, prompt and report in one go (the quick start)",
        description="The whole pipeline on a built-in domain: collect a reward-free dataset, pretrain "
        "an agent with its CPU preset, prompt it with every task and goal, write a report.",
    )
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--domain", default="point_mass_maze")
    p.add_argument("--agent", default="fb")
    _add_collector_options(p)
    p.add_argument("--transitions", dest="num_transitions", type=int, default=200_000)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the training preset")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsrl",
        description="zsrl: zero-shot reinforcement learning — collect reward-free data, pretrain "
        "FB/FRE agents, prompt them with rewards or goals.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from zsrl import __version__

    parser.add_argument("--version", action="version", version=f"zsrl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_collect(sub)
    _add_data(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_pipeline(sub)
    sub.add_parser("presets", help="list the shipped configuration presets")
    sub.add_parser("domains", help="list the available domains and their tasks")
    return parser


def _format_describe(info: dict) -> str:
    lines = [
        f"domain       {info['domain']}",
        f"collector    {info['collector']} (seed {info['seed']})",
        f"transitions  {info['transitions']:,}",
        (
            f"episodes     {info['episodes']:,} (length min {info['episode_length']['min']}, "
            f"mean {info['episode_length']['mean']:.1f}, max {info['episode_length']['max']})"
        ),
        f"terminal     {info['terminal_fraction']:.2%} of transitions",
        f"physics      {'stored' if info['physics'] else 'no'}",
    ]
    if "floor_coverage" in info["coverage"]:
        lines.append(f"coverage     {info['coverage']['floor_coverage']:.1%} of floor cells ({info['coverage']['grid']})")
    lines.append(f"coverage     {info['coverage']['occupied_cells_10_per_dim_top2_pca']:.1%} of a 10x10 grid over the top-2 PCA plane")
    for key in ("observation", "action"):
        r = info[key]
        lines.append(f"\n{key} ({len(r['mean'])} dims)")
        lines.append(f"  {'dim':>4} {'min':>9} {'p01':>9} {'mean':>9} {'p99':>9} {'max':>9} {'std':>9}")
        for d in range(len(r["mean"])):
            lines.append(
                f"  {d:>4} " + " ".join(f"{r[s][d]:>9.3f}" for s in ("min", "p01", "mean", "p99", "max", "std"))
            )
    return "\n".join(lines)


def _cmd_collect(args: argparse.Namespace) -> None:
    from zsrl.collection import collect_to_disk
    from zsrl.envs import make_domain

    domain = make_domain(args.domain)
    ds = collect_to_disk(domain, _collector_config(args), args.num_transitions, args.out, seed=args.seed,
                         overwrite=args.overwrite, progress=not args.no_progress, domain_spec=args.domain)
    if ds is None:  # a torchrun rank > 0: rank 0 wrote the dataset
        return
    print(
        f"wrote {len(ds):,} transitions ({ds.meta['transitions_per_second']:,.0f} transitions/s) "
        f"to {args.out}"
    )


def _cmd_data(args: argparse.Namespace) -> None:
    {"goals": _cmd_goals, "describe": _cmd_describe, "import": _cmd_import, "export": _cmd_export}[args.data_command](args)


def _cmd_export(args: argparse.Namespace) -> None:
    from zsrl.api import export_minari

    exported = export_minari(args.path, args.minari_id)
    print(f"wrote the Minari dataset {args.minari_id} ({exported.total_episodes:,} episodes, "
          f"{exported.total_steps:,} steps)")


def _cmd_import(args: argparse.Namespace) -> None:
    from zsrl.api import import_dataset

    ds = import_dataset(args.format, args.source, args.domain, args.out, episodes=args.episodes,
                        overwrite=args.overwrite)
    print(f"imported {ds.meta['episodes_imported']:,} episodes, {len(ds):,} transitions of {ds.domain} to {args.out}")


def _cmd_describe(args: argparse.Namespace) -> None:
    from zsrl.data import OfflineDataset
    from zsrl.envs import make_domain
    from zsrl.errors import RegistryError

    ds = OfflineDataset.load(args.path)
    info = ds.describe()
    try:
        domain = make_domain(ds.meta.get("domain_spec", ds.domain), source=f"dataset {args.path}")
    except RegistryError as exc:
        print(f"note: no floor coverage: {exc}", file=sys.stderr)
        domain = None
    floor = None if domain is None else domain.coverage(ds.data["next", "observation"].numpy())
    if floor is not None:
        info["coverage"]["floor_coverage"] = floor
        info["coverage"]["grid"] = "floor grid"
    print(json.dumps(info, indent=2) if args.json else _format_describe(info))


def _cmd_goals(args: argparse.Namespace) -> None:
    from zsrl.data import OfflineDataset
    from zsrl.envs import make_domain
    from zsrl.envs.goals import GOALS_DIR, choose_goals
    from zsrl.storage import atomic_write_json
    from zsrl.utils import now_iso, versions

    ds = OfflineDataset.load(args.path)
    domain = make_domain(ds.meta.get("domain_spec", ds.domain), source=f"dataset {args.path}")
    observations = ds.data["next", "observation"].numpy()
    physics = ds.data["next", "physics"].numpy() if ds.has_physics else None
    source = {"dataset": str(args.path), "collector": ds.meta.get("collector"), "seed": ds.meta.get("seed"),
              "transitions": len(ds), "command": f"zsrl data goals {args.path} --count {args.count} --seed {args.seed}",
              "created": now_iso(), "versions": versions()}
    goals = choose_goals(observations, physics, args.count, source, seed=args.seed)
    out = Path(args.out) if args.out else GOALS_DIR / f"{domain.name}.json"
    atomic_write_json(out, goals.to_dict(domain.name))
    print(f"wrote {len(goals.observations)} goals of {domain.name} to {out} (rows {goals.source['rows']})")


def _cmd_presets(_: argparse.Namespace) -> None:
    from zsrl.config import list_presets

    print("\n".join(list_presets()))


def _cmd_domains(_: argparse.Namespace) -> None:
    from zsrl.envs import make_domain
    from zsrl.envs.pomdp import settings_help
    from zsrl.registry import known_domains

    for name in known_domains():
        d = make_domain(name)
        goals = f"; goals: {', '.join(d.goals)} (dense tasks: dense_<goal>)" if d.goals else ""
        length = d.collection_episode_length
        collects = f" in {length:,}-step episodes" if length and length != d.episode_length else ""
        occluded = f"; +occluded keeps {len(d.position_dims)} coordinates" if d.position_dims else ""
        print(f"{name:<18} tasks: {', '.join(d.tasks)}{goals}; collected {d.default_collector}{collects}{occluded}")
    print(f"\npartially observed variants (NAME+SETTING…, zsrl.envs.pomdp): {settings_help()}")


def _cmd_train(args: argparse.Namespace) -> None:
    from zsrl.training import resume_run, start_run

    if args.resume:
        from zsrl.config import parse_overrides

        overrides = parse_overrides(args.overrides)
        train = overrides.pop("train", {})
        if args.config or args.agent or args.out or args.overwrite or overrides or \
                not isinstance(train, dict) or set(train) - {"steps"}:
            raise UserError(
                "--resume RUN_DIR takes no --config, --agent, --out, --overwrite or overrides other than "
                "train.steps=N (to train the run on to N updates): the run's own config is used (and "
                "--dataset, to point at its dataset where it moved). To change anything else, start a new run."
            )
        resume_run(args.resume, dataset=args.dataset, steps=train.get("steps"))
        return
    if args.config and args.agent:
        raise UserError("give --config PRESET or --agent AGENT, not both")
    missing = [f"--{k}" for k in ("dataset", "out") if not getattr(args, k)]
    if not (args.config or args.agent):
        missing.insert(0, "--config (or --agent)")
    if missing:
        raise UserError(f"zsrl train needs {', '.join(missing)} (or --resume RUN_DIR)")
    if args.agent:
        start_run(_generic_config(args.agent, args.dataset, args.overrides), args.dataset, args.out,
                  overwrite=args.overwrite)
    else:
        start_run(args.config, args.dataset, args.out, args.overrides, overwrite=args.overwrite)


def _generic_config(agent: str, dataset: str, overrides: list[str]) -> RunConfig:
    """The agent's generic preset on the domain the dataset was collected on."""
    import torch

    from zsrl.config import generic_preset, load_run_config, parse_overrides
    from zsrl.envs import make_domain
    from zsrl.storage import read_json

    meta = read_json(Path(dataset) / "meta.json", f"dataset {dataset} (is it a `zsrl collect` folder?)")
    domain = (meta.get("domain_spec") or meta.get("domain")) if isinstance(meta, dict) else None
    if not isinstance(domain, str) or not domain:
        raise UserError(f"dataset {dataset}: meta.json names no domain; use --config PRESET domain=NAME")
    preset = generic_preset(agent, gpu=torch.cuda.is_available())
    if "domain" not in parse_overrides(overrides):  # a module path named by the dataset needs trust
        make_domain(domain, source=f"dataset {dataset}")
    print(f"training {agent} with the preset {preset} on domain {domain} (from the dataset)")
    return load_run_config(preset, overrides, domain=domain)


def _names(value: str | None) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [x.strip() for x in value.split(",") if x.strip()] if value else []


def _integers(flag: str, value: str) -> list[int]:
    try:
        numbers = [int(x) for x in _names(value)]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers such as 0,1,2; got {value!r}") from None
    if not numbers:
        raise UserError(f"{flag} needs at least one integer, e.g. {flag} 0")
    return numbers


def _at_least_one(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from zsrl import report
    from zsrl.evaluation import compare_with_oracle, evaluate_run
    from zsrl.utils import resolve_device

    seeds = _integers("--seeds", args.seeds)
    _at_least_one("--episodes", args.episodes)
    _at_least_one("--reward-samples", args.reward_samples)
    resolve_device(args.device)  # a bad --device fails before any work
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval"
    with report.locked_report(out, args.json_path):  # checked, computed and written by one process
        report.refuse_to_replace(out, args.json_path, overwrite=args.overwrite)
        evaluation = evaluate_run(
            args.run_dir, tasks=None if args.tasks is None else _names(args.tasks), user_tasks=args.task,
            goals=_names(args.goals), episodes=args.episodes, reward_samples=args.reward_samples,
            seeds=seeds, device=args.device, dataset=args.dataset, domain=args.domain,
        )
        if args.oracle:
            compare_with_oracle(evaluation, args.oracle, device=args.device)
        report.write_report(evaluation, out, video=args.video, overwrite=args.overwrite)
        if args.json_path:
            report.write_results_json(evaluation, args.json_path)
    print(f"scored {evaluation.scored}")
    for note in evaluation.notes:
        print(f"note: {note}")
    print(report.format_table(evaluation))
    print(f"\nwrote {out / report.REPORT}, {out / report.RESULTS} and pictures")


def _cmd_pipeline(args: argparse.Namespace) -> None:
    from zsrl.pipeline import run_pipeline

    run_pipeline(args.out, domain=args.domain, agent=args.agent, collector=_collector_config(args),
                 num_transitions=args.num_transitions, seed=args.seed, overrides=args.overrides,
                 episodes=args.episodes, progress=not args.no_progress)


COMMANDS = {
    "pipeline": _cmd_pipeline,
    "collect": _cmd_collect,
    "data": _cmd_data,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "presets": _cmd_presets,
    "domains": _cmd_domains,
}


def _print_error(command: str, message: str) -> None:
    from zsrl import distributed

    where = f" (process {distributed.rank()} of {distributed.world_size()})" if distributed.active() else ""
    print(textwrap.fill(f"zsrl {command}{where}: error: {message}", width=100, break_long_words=False,
                        break_on_hyphens=False), file=sys.stderr)


#: the commands that spread over the processes of a torchrun launch
DISTRIBUTED_COMMANDS = ("train", "collect")


def _check_launch(command: str) -> None:
    from zsrl.distributed import launched_world_size

    if launched_world_size() > 1 and command not in DISTRIBUTED_COMMANDS:
        raise UserError(f"zsrl {command} runs in one process; of the commands, only "
                        f"{' and '.join(DISTRIBUTED_COMMANDS)} spread over the processes of a torchrun launch. "
                        f"Run `zsrl {command} …` without torchrun.")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from zsrl.interrupt import TerminateAsInterrupt

    term = TerminateAsInterrupt()
    try:
        from zsrl.registry import trusted_plugins

        with term, trusted_plugins() if getattr(args, "trust_plugins", False) else contextlib.nullcontext():
            _check_launch(args.command)
            COMMANDS[args.command](args)
    except UserError as exc:
        from zsrl.distributed import PeerError

        if not isinstance(exc, PeerError):  # else rank 0 printed it
            _print_error(args.command, str(exc))
        return int(getattr(exc, "exit_code", 2))
    except BrokenPipeError:  # e.g. `zsrl data describe DIR | head`: the reader stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except OSError as exc:  # a storage failure that no caller put in words
        from zsrl.storage import STORAGE_ERRNOS, describe_os_error

        if exc.errno not in STORAGE_ERRNOS:
            raise

        where = f" ({exc.filename})" if exc.filename else ""
        _print_error(args.command, f"{describe_os_error(exc)}{where}. Fix the storage (free space, permissions) "
                     "and run the command again.")
        return 2
    except KeyboardInterrupt:
        print(f"zsrl {args.command}: {'terminated' if term.terminated else 'interrupted'}; nothing partial "
              "was left behind.", file=sys.stderr)
        return 143 if term.terminated else 130
    finally:
        from zsrl import distributed

        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
