"""The training loop shared by every agent.

Per update: sample a batch on the training device → ``agent.update(batch)`` → accumulate
the metric tensors on the device. Every ``log_every`` updates the accumulated metrics are
read back in one transfer (the only host synchronisation), written to ``metrics.csv`` (and
TensorBoard when enabled) and shown on the progress bar with updates/s. Every
``checkpoint_every`` updates, and at the end, ``RUN_DIR/checkpoint`` is replaced atomically.

A run directory::

    config.json     the resolved RunConfig
    run.json        dataset, seed, package versions, start time, command
    metrics.csv     step, wall time, updates/s, every metric
    eval.csv        periodic zero-shot evaluation (when train.eval_every > 0)
    checkpoint/     latest checkpoint (see zsrl.checkpoint)
    model/          final inference model

``resume_run(RUN_DIR)`` restores agent, optimizers, targets, RNG states and the step, so a
run interrupted at step k and resumed reaches the same parameters at step n as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from zsrl.checkpoint import (
    CHECKPOINT,
    FINAL_MODEL,
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from zsrl.config import RunConfig, load_run_config, resolve_auto, run_config_from_dict
from zsrl.data import OfflineDataset
from zsrl.registry import agent_class, make_domain
from zsrl.utils import (
    UserError,
    atomic_write_json,
    now_iso,
    read_json,
    resolve_device,
    seed_everything,
    versions,
)


class MetricsLog:
    """Append-only CSV of metrics (columns fixed by the first row), optional TensorBoard."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None, resume_step: int | None = None):
        self.path = path
        self.fields: list[str] | None = None
        if resume_step is not None and path.exists():
            self._truncate_after(resume_step)
        elif path.exists():
            path.unlink()
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("train.tensorboard=true needs TensorBoard: pip install 'zsrl[tensorboard]'") from None
            self.tb = SummaryWriter(str(tensorboard_dir))

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
        with self.path.open() as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        self.fields = list(rows[0].keys())
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(r for r in rows if int(r["step"]) <= step)

    def write(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def build_agent(cfg: RunConfig, obs_dim: int, action_dim: int, device: torch.device):
    cls = agent_class(cfg.agent.name)
    if cls.needs_task and not cfg.task:
        raise UserError(f"agent {cfg.agent.name!r} is supervised: set the task to learn, e.g. task=walk")
    return cls(obs_dim, action_dim, cfg.agent, device)



def configure_device(tc: Any, device: torch.device) -> tuple[bool, bool]:
    """Device-wide settings of a run; returns the resolved ``(compile, cudagraphs)``.

    On CUDA: TF32 matmuls unless ``train.tf32=false``; ``compile`` / ``cudagraphs`` default
    (``auto``) to on. On CPU both default to off.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tc.tf32
        torch.backends.cudnn.allow_tf32 = tc.tf32
        torch.set_float32_matmul_precision("high" if tc.tf32 else "highest")
    return resolve_auto(tc.compile, device), resolve_auto(tc.cudagraphs, device)


def _prepare_run_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            hint = f"resume it with `zsrl train --resume {out}`, " if (out / CHECKPOINT).exists() else ""
            raise UserError(f"run directory {out} already exists; {hint}choose another --out or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def start_run(
    config: str | Path | RunConfig,
    dataset: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Start a new run from a preset/YAML (plus overrides) or a RunConfig; returns RUN_DIR."""
    cfg = config if isinstance(config, RunConfig) else load_run_config(config, overrides)
    if isinstance(config, RunConfig) and overrides:
        raise UserError("overrides apply to presets; edit the RunConfig directly instead")
    out = Path(out)
    domain = make_domain(cfg.domain)
    device = resolve_device(cfg.train.device)
    data = OfflineDataset.load(dataset, device=device, domain=domain.name)
    _prepare_run_dir(out, overwrite)
    atomic_write_json(out / "config.json", asdict(cfg))
    atomic_write_json(
        out / "run.json",
        {
            "dataset": str(Path(dataset).resolve()),
            "dataset_meta": {k: data.meta.get(k) for k in ("domain", "collector", "seed", "num_transitions", "created")},
            "seed": cfg.train.seed,
            "device": str(device),
            "started": now_iso(),
            "command": " ".join(sys.argv),
            "versions": versions(),
        },
    )
    _train(cfg, data, domain, out, device, resume=False)
    return out


def resume_run(run_dir: str | Path) -> Path:
    """Continue an interrupted run from ``RUN_DIR/checkpoint`` (or restart it if it has none)."""
    run_dir = Path(run_dir)
    cfg = run_config_from_dict(read_json(run_dir / "config.json", f"run {run_dir}"))
    run = read_json(run_dir / "run.json", f"run {run_dir}")
    domain = make_domain(cfg.domain)
    device = resolve_device(cfg.train.device)
    data = OfflineDataset.load(run["dataset"], device=device, domain=domain.name)
    _train(cfg, data, domain, run_dir, device, resume=(run_dir / CHECKPOINT).exists())
    return run_dir


def _train(cfg: RunConfig, data: OfflineDataset, domain: Any, run_dir: Path, device: torch.device, resume: bool) -> None:
    tc = cfg.train
    seed_everything(tc.seed)
    agent = build_agent(cfg, data.obs_dim, data.action_dim, device)
    agent.setup(data, domain, cfg.task)
    start = load_training_state(run_dir, agent) if resume else 0
    if start >= tc.steps:
        print(f"run {run_dir} is already complete ({start} of {tc.steps} steps)")
        return
    compile_step, cudagraphs = configure_device(tc, device)
    agent.setup_compile(compile_step, cudagraphs, tc.precision)
    log = MetricsLog(run_dir / "metrics.csv", run_dir / "tb" if tc.tensorboard else None, start if resume else None)
    evaluator = _periodic_evaluator(cfg, data, domain, run_dir, resume_step=start if resume else None)
    model_meta = {"domain": domain.name, "task": cfg.task}

    acc: torch.Tensor | None = None  # the summed metric vector (names: agent.metric_names)
    count = 0
    t_last, step_last, t0 = time.perf_counter(), start, time.perf_counter()
    bar = tqdm(total=tc.steps, initial=start, unit="upd", disable=not tc.progress,
               desc=f"train {cfg.agent.name}", mininterval=1.0)
    step = start
    try:
        for step in range(start + 1, tc.steps + 1):
            metrics = agent.train_step(data, tc.batch_size)  # sampling happens inside the step
            acc = metrics.clone() if acc is None else acc.add_(metrics)
            count += 1
            if step % tc.log_every == 0 or step == tc.steps:
                now = time.perf_counter()
                names = agent.metric_names
                means = (acc / count).tolist()  # the one host sync per log period
                ups = (step - step_last) / (now - t_last)
                log.write({"step": step, "time": round(now - t0, 3), "updates_per_s": round(ups, 2),
                           **dict(zip(names, means))})
                bar.set_postfix(ups=f"{ups:.0f}", **{k.split("/")[-1]: f"{v:.3g}" for k, v in list(zip(names, means))[:2]})
                acc, count, t_last, step_last = None, 0, now, step
            if evaluator is not None and step % tc.eval_every == 0:
                evaluator(agent.model, step)
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                save_checkpoint(run_dir, agent, step, model_meta)
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        log.close()
        raise UserError(
            f"training interrupted at step {step}; the last checkpoint is kept. Continue with "
            f"`zsrl train --resume {run_dir}`"
        ) from None
    bar.close()
    log.close()
    agent.model.save(run_dir / FINAL_MODEL, extra=model_meta)


def _periodic_evaluator(cfg: RunConfig, data: OfflineDataset, domain: Any, run_dir: Path, resume_step: int | None):
    tc = cfg.train
    if tc.eval_every <= 0:
        return None
    from zsrl.evaluate import evaluate_tasks

    tasks = tc.eval_tasks or list(domain.tasks)[:2]
    log = MetricsLog(run_dir / "eval.csv", resume_step=resume_step)

    def run(model, step: int) -> None:
        saved = rng_state()  # evaluation must not perturb the training random stream
        model.eval()
        results = evaluate_tasks(
            model, domain, data, tasks, episodes=tc.eval_episodes,
            reward_samples=tc.eval_reward_samples, seed=tc.seed + 10_000,
        )
        model.train()
        set_rng_state(saved)
        log.write({"step": step, **{f"return/{t}": r["mean_return"] for t, r in results.items()}})

    return run
