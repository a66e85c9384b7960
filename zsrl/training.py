"""The training loop shared by every agent.

Per update: one :meth:`zsrl.engine.Engine.step` (sample a batch on the training device →
``agent.update(batch)`` → the parameter average) → accumulate the metric vector on the device
(:class:`zsrl.engine.MetricAccumulator`). Every ``log_every`` updates the
accumulated metrics are read back in one transfer (the only host synchronisation), checked
for divergence, written to ``metrics.csv`` (and TensorBoard when enabled) and shown on the
progress bar with updates/s. Every ``checkpoint_every`` updates, and at the end,
``RUN_DIR/checkpoint`` is replaced by renames (:mod:`zsrl.checkpoint`) — never with
non-finite weights.

A run directory::

    config.json     the resolved RunConfig
    run.json        dataset (path and fingerprint), seed, package versions, start time, command
    metrics.csv     step, wall time, updates/s, every metric
    eval.csv        periodic zero-shot evaluation (when train.eval_every > 0)
    checkpoint/     latest checkpoint (.checkpoint.old: the one before)
    model/          final inference model

Safety: every value of the config is validated, and the dataset loaded and checked against
the domain, before the run directory is created; ``--overwrite`` replaces only a run
directory, and one process at a time writes a run (:mod:`zsrl.storage`).
SIGTERM and Ctrl-C save a checkpoint of the current step before exiting.

**Data parallel** (``torchrun --nproc-per-node N -m zsrl train …``; :mod:`zsrl.distributed`):
every rank runs this loop on its own share ``train.batch_size / N`` of each update's batch,
drawn from its own random stream (rank 0's is a one-process run's), and the gradients are
averaged inside the update. Rank 0 writes every file and takes the writer lock; an error it
meets there stops every rank. Metric rows are means over the ranks; the ranks agree on
stopping (signals, callbacks) at the log rows, and a checkpoint holds every rank's random
stream, so a run resumes exactly on as many processes as it started with (``run.json``
records ``world_size``; another count is refused).

``resume_run(RUN_DIR)`` restores agent, optimizers, targets, RNG states, the step and the
metrics accumulated since the last row, so a run interrupted at step k and resumed reaches
the same parameters and metric rows at step n as an uninterrupted one. ``resume_run(RUN_DIR,
steps=N)`` trains a run on to N updates (its ``config.json`` is updated first): nothing in the
loop or the agents depends on the planned total, so a run of n updates extended to N is the
run of N updates.
"""

from __future__ import annotations

import contextlib
import csv
import io
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from zsrl import distributed
from zsrl.callbacks import Callback
from zsrl.checkpoint import (
    CHECKPOINT,
    FINAL_MODEL,
    find_checkpoint,
    find_final_model,
    load_training_state,
    save_checkpoint,
    save_final_model,
)
from zsrl.config import (
    RunConfig,
    config_differences,
    load_run_config,
    resolve_auto,
    run_config_from_dict,
    validate,
)
from zsrl.data import (
    OfflineDataset,
    check_domain,
    check_fits_domain,
    fingerprint,
    held_action_transitions,
    run_dataset,
)
from zsrl.engine import Engine, MetricAccumulator, diverged, nonfinite_parameter
from zsrl.envs import make_domain
from zsrl.errors import Interrupted, UserError
from zsrl.interrupt import StopRequests
from zsrl.registry import agent_class
from zsrl.storage import (
    atomic_write_bytes,
    atomic_write_json,
    check_out,
    create_run_dir,
    is_run_dir,
    read_json_object,
    remove_stale_partials,
    storage_errors,
    writer_lock,
)
from zsrl.trackers import check_trackers, open_trackers
from zsrl.utils import (
    fault_point,
    now_iso,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    versions,
)


class MetricsLog:
    """Append-only CSV of metrics (columns fixed by the first row)."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        self.fields: list[str] | None = None
        if resume_step is not None and path.exists():
            self._truncate_after(resume_step)
        elif path.exists():
            path.unlink()

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after the checkpoint we resume from (they will be logged again).

        A last row cut short by a kill is dropped; any other unreadable row is an error.
        """
        text = self.path.read_text(errors="replace")
        lines = text.splitlines(keepends=True)
        if not lines or not lines[0].endswith("\n"):  # empty, or killed while writing the header
            self.path.unlink()
            return
        header = next(csv.reader([lines[0]]))
        if not header or header[0] != "step":
            raise UserError(f"{self.path} is corrupt (its header is not a metrics header); move it "
                            "away to resume (its rows up to the checkpoint will be missing)")
        self.fields = header
        keep = [lines[0]]
        for i, line in enumerate(lines[1:], start=2):
            row = next(csv.reader([line]), [])
            try:
                ok = len(row) == len(header) and line.endswith("\n")
                row_step = int(row[0])
            except (ValueError, IndexError):
                ok = False
            if not ok:
                if i == len(lines):  # a row torn by a kill mid-write
                    break
                raise UserError(f"{self.path} is corrupt at line {i}; move it away to resume "
                                "(its rows up to the checkpoint will be missing)")
            if row_step <= step:
                keep.append(line)
        with storage_errors(f"rewrite {self.path}"):
            atomic_write_bytes(self.path, "".join(keep).encode())

    def write(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
        with storage_errors(f"append to {self.path}", "The last checkpoint is intact; resume with "
                            f"`{resume_command(self.path.parent)}`."), self.path.open("a", newline="") as f:
            f.write(buf.getvalue())


def build_agent(cfg: RunConfig, obs_dim: int, action_dim: int, device: torch.device) -> Any:
    """The agent of ``cfg`` for these dimensions, on ``device``."""
    cls = agent_class(cfg.agent.name)
    if cls.needs_task and not cfg.task:
        raise UserError(f"agent {cfg.agent.name!r} is supervised: set the task to learn, e.g. task=walk")
    if cfg.task and not cls.needs_task:
        raise UserError(f"agent {cfg.agent.name!r} learns without rewards: task={cfg.task} is for a supervised "
                        "agent (td3); leave it out and prompt the model with the task when evaluating")
    if cls.needs_task and cfg.agent.action_repeat != 1:
        raise UserError(
            f"agent {cfg.agent.name!r} learns from one-step task rewards; set agent.action_repeat=1"
        )
    return cls(obs_dim, action_dim, cfg.agent, device)


def _check_names(cfg: RunConfig, domain: Any) -> None:
    tasks = list(domain.all_tasks)
    unknown = [t for t in ([cfg.task] if cfg.task else []) + (cfg.train.eval_tasks if cfg.train.eval_every else [])
               if t not in tasks]
    if unknown:
        raise UserError(f"domain {domain.name!r} has no task {', '.join(map(repr, unknown))}; its tasks: "
                        f"{', '.join(tasks)}")


def prepare(cfg: RunConfig, dataset: Path | OfflineDataset, source: str | None = None
            ) -> tuple[Any, OfflineDataset, OfflineDataset, Any]:
    """Domain, dataset (loaded from its path, or as given, on the training device), the
    transitions the agent trains on (held-action windows when ``agent.action_repeat > 1``)
    and a seeded, set-up agent: everything that can fail on bad input, done before a run
    directory is touched. ``source``: the run ``cfg`` was read from (:mod:`zsrl.registry`)."""
    domain = make_domain(cfg.domain, source)
    _check_names(cfg, domain)
    device = distributed.local_device(resolve_device(cfg.train.device))
    if isinstance(dataset, OfflineDataset):
        check_domain(dataset.path, dataset.domain, domain.name)
        data = dataset.to(device)
    else:
        data = OfflineDataset.load(dataset, device=device, domain=domain.name)
    check_fits_domain(data, domain, str(data.path))
    if domain.observer is not None:  # a partially observed variant: what the agent sees (zsrl.envs.pomdp)
        data = data.seen_through(domain.observer, cfg.train.seed)
    seed_everything(cfg.train.seed)
    train_data = held_action_transitions(data, cfg.agent.action_repeat)
    batch = cfg.train.batch_size
    if batch > len(train_data):
        raise UserError(f"train.batch_size={batch} is larger than the dataset, {len(train_data):,} transitions "
                        "to train on; collect more data or lower train.batch_size")
    if not bool((train_data.data["next", "observation"].std(0) > 0).any()):
        raise UserError(f"the observations of dataset {data.path} never change (every coordinate is constant): "
                        "there is nothing to learn from it; collect it again with a policy that moves")
    agent = build_agent(cfg, data.obs_dim, data.action_dim, device)
    # a rank's share: its rows against the global batch's columns
    need, available = agent.batch_bytes(batch) // distributed.world_size(), available_memory(device)
    if need > available:
        raise UserError(f"train.batch_size={batch} needs about {need / 2**30:,.1f} GiB for {cfg.agent.name}'s update "
                        f"(its losses contrast every pair of the batch) and {device} has {available / 2**30:,.1f} "
                        "GiB free; lower train.batch_size (or spread it over more processes)")
    agent.setup(train_data, domain, cfg.task)
    return domain, data, train_data, agent


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or the host's MemAvailable (Linux; no
    bound elsewhere)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return 2**62
    return next((int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")),
                2**62)


def configure_device(tc: Any, device: torch.device) -> tuple[bool, bool]:
    """Device-wide settings of a run; returns the resolved ``(compile, cudagraphs)``.

    On CUDA: TF32 matmuls unless ``train.tf32=false``; ``compile`` / ``cudagraphs`` default
    (``auto``) to on. On CPU both default to off; ``train.compile=true`` there needs the C++
    compiler inductor builds its kernels with, and without one the run trains eagerly (same
    maths) after a warning instead of failing at its first update.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tc.tf32
        torch.backends.cudnn.allow_tf32 = tc.tf32
        torch.set_float32_matmul_precision("high" if tc.tf32 else "highest")
    compile_step = resolve_auto(tc.compile, device)
    if compile_step and device.type == "cpu":
        missing = missing_cpp_compiler()
        if missing:
            warnings.warn(
                f"train.compile=true on a CPU needs a C++ compiler and {missing}; training without "
                "compiling (the same updates, slower). Install g++ (or point $CXX at a compiler) to "
                "compile, or set train.compile=false to silence this.",
                stacklevel=2,
            )
            compile_step = False
    return compile_step, resolve_auto(tc.cudagraphs, device)


def missing_cpp_compiler() -> str | None:
    """``None`` where inductor finds the C++ compiler it compiles CPU kernels with, else why not."""
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except (InvalidCxxCompiler, OSError) as e:
        return f"none was found ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no compiler'})"
    return None


def start_run(
    config: str | Path | RunConfig,
    dataset: str | Path | OfflineDataset,
    out: str | Path,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Start a new run from a preset/YAML (plus overrides) or a RunConfig on a dataset (its
    directory, or an :class:`OfflineDataset` loaded from one); returns RUN_DIR.

    ``overwrite`` replaces ``out`` only if it is a run directory (:func:`zsrl.storage.check_out`).
    """
    if isinstance(config, RunConfig) and overrides:
        raise UserError("overrides apply to presets; edit the RunConfig directly instead")
    cfg = config if isinstance(config, RunConfig) else load_run_config(config, overrides)
    validate(cfg)
    distributed.init()
    check_world_batch(cfg)
    out = Path(out)
    check_trackers(cfg.train.loggers)
    if isinstance(dataset, OfflineDataset) and dataset.path is None:
        raise UserError("the dataset is in memory only; save it (dataset.save(DIR)) and train on DIR")
    data_path = Path(dataset.path if isinstance(dataset, OfflineDataset) else dataset)
    with main_writer_lock(out):
        replace = distributed.on_main(lambda: check_out(out, "run", overwrite, protect=(data_path,)))
        domain, data, train_data, agent = prepare(cfg, dataset)
        run_info = {
            "dataset": str(data_path.resolve()),
            "dataset_fingerprint": fingerprint(data_path),
            "dataset_meta": {k: data.meta.get(k) for k in ("domain", "collector", "seed", "num_transitions", "created")},
            # a partially observed variant (zsrl.envs.pomdp): what the agent saw of the data
            **({"variant": {k: domain.describe()[k] for k in ("variant", "observation", "dynamics")}}
               if domain.variant else {}),
            "seed": cfg.train.seed,
            "device": str(agent.device),
            # CPU float reductions split by thread: the same seed on another thread count trains
            # a different (equally valid) network, so the count is part of what reproduces a run
            "cpu_threads": torch.get_num_threads(),
            # data parallel: ranks, each sampling train.batch_size / world_size rows of an update
            "world_size": distributed.world_size(),
            "started": now_iso(),
            "command": " ".join(sys.argv),
            "config": asdict(cfg),  # as started: a resume refuses a config.json edited since
            "versions": versions(),
        }

        def create() -> None:
            with storage_errors(f"create the run directory {out}"):
                create_run_dir(out, {"config.json": asdict(cfg), "run.json": run_info}, replace)

        distributed.on_main(create)
        _train(cfg, data, train_data, domain, out, agent, start=0, loop={}, resumed=False, callbacks=callbacks)
    return out


def check_world_batch(cfg: RunConfig) -> None:
    """The global batch must split evenly over the ranks of a ``torchrun`` launch."""
    world = distributed.world_size()
    if cfg.train.batch_size % world:
        raise UserError(f"train.batch_size={cfg.train.batch_size} is the global batch and must split evenly over "
                        f"the {world} processes; give a multiple of {world}")


@contextlib.contextmanager
def main_writer_lock(run_dir: Path) -> Iterator[None]:
    """The run's writer lock, held by rank 0 (the process that writes; every rank hears if
    it cannot be taken)."""
    with contextlib.ExitStack() as stack:
        distributed.on_main(lambda: stack.enter_context(writer_lock(run_dir, "run")))
        yield


def _check_unedited(run_dir: Path, started: Any, saved: dict[str, Any]) -> None:
    """Refuse a ``config.json`` edited since the run started (``train.steps`` aside, which
    ``--resume train.steps=N`` sets); runs of earlier releases recorded no config to compare."""
    if not isinstance(started, dict):
        return
    edits = [f"{key}: {was!r} → {now!r}" for key, was, now in config_differences(started, saved)
             if key != "train.steps"]
    if edits:
        raise UserError(
            f"{run_dir}/config.json was edited since the run started ({'; '.join(edits[:4])}"
            f"{' …' if len(edits) > 4 else ''}); a resume continues the run as it started and takes no other "
            "change than train.steps=N. Undo the edit, or start a new run with the new settings."
        )


def _checkpointed_before(run_dir: Path, cfg: RunConfig) -> str | None:
    """Evidence that ``run_dir`` once had a complete checkpoint (so that its absence is a loss).

    The first periodic checkpoint is written before any later step runs, so a metric row past
    it proves one existed; a run killed before it simply starts again from step 0.
    """
    if (run_dir / FINAL_MODEL).exists():
        return f"it has a {FINAL_MODEL}/ folder"
    first = min(cfg.train.checkpoint_every, cfg.train.steps)
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        steps = [int(f) for f in (line.split(",", 1)[0] for line in metrics.read_text(errors="replace").splitlines())
                 if f.isdigit()]
        if steps and max(steps) > first:
            return f"{metrics} has rows up to step {max(steps)}, past the first checkpoint at step {first}"
    return None


def resume_command(run_dir: Path, world: int | None = None) -> str:
    """The command that resumes ``run_dir`` on ``world`` processes (default: this run's)."""
    world = distributed.world_size() if world is None else world
    launcher = "zsrl" if world == 1 else f"torchrun --nproc-per-node {world} -m zsrl"
    return f"{launcher} train --resume {run_dir}"


def _check_world_size(run_dir: Path, run: dict[str, Any]) -> None:
    """A run resumes on as many processes as it started with: each rank's random stream and
    share of the batch are part of its state."""
    started, now = run.get("world_size", 1), distributed.world_size()
    if started != now:
        how = f"`{resume_command(run_dir, started)}`" + (
            "" if started == 1 else f" (or {started} processes over several machines)")
        raise UserError(
            f"run {run_dir} trained on {started} process{'es' if started != 1 else ''} and this resume has {now}: "
            f"each process's random stream and share of the batch are part of the run. Resume with {how}, "
            "or start a new run."
        )


def _warn_other_thread_count(run: dict[str, Any], device: torch.device) -> None:
    threads = run.get("cpu_threads")
    if device.type == "cpu" and threads is not None and threads != torch.get_num_threads():
        warnings.warn(
            f"this run started with {threads} CPU threads and resumes with {torch.get_num_threads()}: "
            "the resumed updates will not match an uninterrupted run bit for bit (float reductions "
            f"split by thread). For an exact resume, set OMP_NUM_THREADS={threads}.",
            stacklevel=3,
        )


def resume_run(run_dir: str | Path, dataset: str | Path | None = None, steps: int | None = None,
               callbacks: Sequence[Callback] = ()) -> Path:
    """Continue an interrupted run from its checkpoint (or restart one that never made one).

    ``dataset`` points at the run's dataset where it moved; it must be the same data.
    ``steps`` replaces the run's ``train.steps`` to train it on further (a finished run too);
    it may not be below the checkpoint's step.
    """
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a zsrl run directory (no run.json); start one with `zsrl train`")
    distributed.init()
    with main_writer_lock(run_dir):
        saved = read_json_object(run_dir / "config.json", f"run {run_dir}")
        run = read_json_object(run_dir / "run.json", f"run {run_dir}")
        _check_world_size(run_dir, run)
        _check_unedited(run_dir, run.get("config"), saved)
        if steps is not None and isinstance(saved.get("train"), dict):  # else parsing says what is wrong
            saved = {**saved, "train": {**saved["train"], "steps": steps}}
        cfg = run_config_from_dict(saved, source=f"run {run_dir}")
        check_world_batch(cfg)
        data_path = run_dataset(run_dir, run, dataset, f"resume with `zsrl train --resume {run_dir} --dataset NEW_PLACE`")
        domain, data, train_data, agent = prepare(cfg, data_path, source=f"run {run_dir}")
        _warn_other_thread_count(run, agent.device)
        # debris of killed writers (rank 0 holds the lock; the others wait for it here)
        distributed.on_main(lambda: [remove_stale_partials(run_dir / sub) for sub in (CHECKPOINT, FINAL_MODEL)])
        start, loop = 0, {}
        if find_checkpoint(run_dir) is not None:
            start, loop = load_training_state(run_dir, agent)
        elif (why := _checkpointed_before(run_dir, cfg)) is not None:
            raise UserError(
                f"run {run_dir} has no complete checkpoint but trained before ({why}): its checkpoint "
                "was removed or damaged. Resuming would restart at step 0 and overwrite its history; "
                "restore checkpoint/ or start a new run."
            )
        if steps is not None and steps < start:
            raise UserError(
                f"run {run_dir} is at step {start}: train.steps={steps} would take it back. "
                f"Give train.steps >= {start}, or start a new run for a shorter one."
            )

        def record() -> None:
            if dataset is not None and str(data_path.resolve()) != run["dataset"]:
                atomic_write_json(run_dir / "run.json", {**run, "dataset": str(data_path.resolve())})
            if steps is not None:
                atomic_write_json(run_dir / "config.json", saved)

        distributed.on_main(record)
        _train(cfg, data, train_data, domain, run_dir, agent, start=start, loop=loop, resumed=True, callbacks=callbacks)
    return run_dir


class _Checkpointer:
    """Checkpoint writes of one run, each after the divergence guard passed."""

    def __init__(self, run_dir: Path, agent: Any, acc: MetricAccumulator, meta: dict[str, Any], last: int | None):
        self.run_dir, self.agent, self.acc, self.meta, self.last = run_dir, agent, acc, meta, last

    def check(self, step: int) -> None:
        """Raise :class:`zsrl.errors.TrainingDiverged` if a metric or parameter is non-finite."""
        bad = self.acc.first_nonfinite()
        if bad is not None:
            raise diverged(bad[0], bad[1], self.last, self.run_dir)
        self.check_parameters(step)

    def check_parameters(self, step: int) -> None:
        name = nonfinite_parameter(self.agent.modules())
        if name is not None:
            raise diverged(f"parameter {name}", step, self.last, self.run_dir)

    def _advice(self) -> str:
        kept = f"The checkpoint of step {self.last} is intact; " if self.last else ""
        return f"{kept}continue with `{resume_command(self.run_dir)}`."

    def save(self, step: int) -> None:
        """Write the checkpoint of ``step`` (every rank calls it: rank 0 writes, with every
        rank's random stream and metric sums; the replicas are checked identical first)."""
        if step == self.last:
            return
        self.check(step)
        distributed.check_replicas(self.agent.modules(), step)
        ranks = distributed.gather_objects({"rng": rng_state(), "loop": self.acc.state_dict()})

        def write() -> None:
            with storage_errors(f"write the checkpoint of step {step}", self._advice()):
                save_checkpoint(self.run_dir, self.agent, step, self.meta, self.acc.state_dict(), peers=ranks[1:])

        distributed.on_main(write)
        self.last = step

    def save_model(self, step: int) -> None:
        self.check_parameters(step)

        def write() -> None:
            with storage_errors(f"write the final model to {self.run_dir / FINAL_MODEL}", self._advice()):
                save_final_model(self.run_dir, self.agent.inference_model(), step, self.meta)

        distributed.on_main(write)


def _ask(callbacks: Sequence[Callback], hook: str, *args: Any) -> bool:
    """Call ``hook`` of every callback (each of them, in order); whether one asked to stop."""
    answers = [bool(getattr(cb, hook)(*args)) for cb in callbacks]
    return any(answers)


def _train(cfg: RunConfig, data: OfflineDataset, train_data: OfflineDataset, domain: Any, run_dir: Path,
           agent: Any, *, start: int, loop: dict[str, Any], resumed: bool, callbacks: Sequence[Callback] = ()) -> None:
    tc = cfg.train
    main, world = distributed.is_main(), distributed.world_size()
    acc = MetricAccumulator()
    acc.load_state_dict(loop, agent.device)
    ckpt = _Checkpointer(run_dir, agent, acc, {"domain": domain.name, "task": cfg.task}, start or None)
    if start >= tc.steps:
        if find_final_model(run_dir) is None:
            ckpt.save_model(start)
            if main:
                print(f"run {run_dir}: wrote the final model of step {start} from its checkpoint")
        if main:
            print(f"run {run_dir} is already complete ({start} of {tc.steps} steps)")
        return
    if start == 0 and not main:  # rank 0 keeps the stream of a one-process run
        torch.manual_seed(distributed.rank_seed(tc.seed))
    distributed.check_replicas(agent.modules(), start)
    compile_step, cudagraphs = configure_device(tc, agent.device)
    engine = Engine(agent, compile=compile_step, cudagraphs=cudagraphs, precision=tc.precision)
    if compile_step and main:
        print("compiling the update (torch.compile): its first steps take up to a minute or two, "
              "less where inductor's cache already holds its kernels")
    log = MetricsLog(run_dir / "metrics.csv", start if resumed else None) if main else None
    evaluator = _periodic_evaluator(cfg, data, domain, run_dir, resume_step=start if resumed else None) if main else None
    trackers = open_trackers(tc.loggers, run_dir, asdict(cfg)) if main else []
    callbacks = [*callbacks, *trackers] if main else []
    batch = tc.batch_size // world  # this rank's share of the global batch

    t_last, step_last, t0 = time.perf_counter(), start, time.perf_counter()
    bar = tqdm(total=tc.steps, initial=start, unit="upd", disable=not (tc.progress and main),
               desc=f"train {cfg.agent.name}", mininterval=1.0)
    step, requested = start, False  # requested: a callback asked to stop
    try:
        with StopRequests() as stop:
            for step in range(start + 1, tc.steps + 1):
                acc.add(engine.step(train_data, batch), engine.metric_names, step)  # samples inside
                at_row = step % tc.log_every == 0 or step == tc.steps
                if at_row:
                    now = time.perf_counter()
                    means, bad = acc.read()  # the one host sync per log period (means over ranks)
                    if bad is not None:
                        raise diverged(bad[0], bad[1], ckpt.last, run_dir)
                    ckpt.check_parameters(step)
                    ups = (step - step_last) / (now - t_last)
                    t_last, step_last = now, step
                    if log is not None:
                        row = {"step": step, "time": round(now - t0, 3), "updates_per_s": round(ups, 2), **means}
                        log.write(row)
                        fault_point("metrics:row")
                        bar.set_postfix(ups=f"{ups:.0f}", **{k.split("/")[-1]: f"{v:.3g}" for k, v in list(means.items())[:2]})
                        requested |= _ask(callbacks, "on_log", run_dir, step, row)
                if tc.eval_every > 0 and step % tc.eval_every == 0:
                    ckpt.check(step)
                    if evaluator is not None:
                        returns = evaluator(agent.inference_model(), step)
                        requested |= _ask(callbacks, "on_evaluation", run_dir, step, returns)
                if step % tc.checkpoint_every == 0 or step == tc.steps:
                    ckpt.save(step)
                    requested |= _ask(callbacks, "on_checkpoint", run_dir, step)
                bar.update(1)
                if world > 1 and not at_row:
                    continue  # the ranks decide together, at the log rows
                signalled, stopping = distributed.agree(stop.signum is not None, requested)
                if signalled:
                    ckpt.save(step)
                    by = stop.name if stop.signum is not None else "a stop request to another process of the run"
                    raise Interrupted(
                        f"training stopped by {by} at step {step}; a checkpoint of that step is "
                        f"saved. Continue with `{resume_command(run_dir)}`", stop.signum or signal.SIGTERM)
                if stopping:
                    ckpt.save(step)
                    if main:
                        print(f"run {run_dir}: a callback stopped training at step {step} of {tc.steps}")
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: no time to save
        kept = f"the checkpoint of step {ckpt.last} is kept" if ckpt.last else "no checkpoint was written yet"
        raise UserError(
            f"training interrupted at step {step}; {kept}. Continue with `{resume_command(run_dir)}`"
        ) from None
    except RuntimeError as exc:
        if not distributed.is_peer_failure(exc):
            raise
        kept = f"the checkpoint of step {ckpt.last} is kept" if ckpt.last else "no checkpoint was written yet"
        raise UserError(
            f"another process of this run stopped at step {step} (its own error, if it had one, is printed "
            f"beside this; this process saw: {str(exc).splitlines()[0][:200]}); {kept}. When the cause is fixed, "
            f"continue with `{resume_command(run_dir)}`"
        ) from None
    finally:
        bar.close()
        for tracker in trackers:
            tracker.close()
    ckpt.save_model(step)


def _periodic_evaluator(cfg: RunConfig, data: OfflineDataset, domain: Any, run_dir: Path, resume_step: int | None):
    tc = cfg.train
    if tc.eval_every <= 0:
        return None
    from zsrl.evaluation import evaluate_tasks

    tasks = tc.eval_tasks or list(domain.tasks)[:2]
    log = MetricsLog(run_dir / "eval.csv", resume_step=resume_step)

    def run(model: Any, step: int) -> dict[str, float]:
        saved = rng_state()  # evaluation must not perturb the training random stream
        model.eval()
        results = evaluate_tasks(
            model, domain, data, tasks, episodes=tc.eval_episodes,
            reward_samples=tc.eval_reward_samples, seed=tc.seed + 10_000,
        )
        model.train()
        set_rng_state(saved)
        returns = {t: r["mean_return"] for t, r in results.items()}
        log.write({"step": step, **{f"return/{t}": r for t, r in returns.items()}})
        return returns

    return run
