"""Benchmark: gradient updates per second of agent presets, on random data of the right size.

    python scripts/bench_updates.py --presets fb/walker fre/walker td3/walker --device cuda
    python scripts/bench_updates.py --presets fb/walker --device cuda --scaling --inference
    python scripts/bench_updates.py --presets fb/point_mass_maze_cpu --compare 'train.compile=false'
    python scripts/bench_updates.py --presets fb/point_mass_maze_cpu fbm/point_mass_maze_cpu fbstack/point_mass_maze_cpu
    OMP_NUM_THREADS=1 python scripts/bench_updates.py --presets fb/walker_cpu --device cpu \
        --threads 1 agent.hidden_dim=256 agent.embedding_dim=128 train.batch_size=512

Only the update speed is measured: the step samples from a device-resident random dataset
of the domain's observation/action sizes (the supervised TD3 oracle gets random rewards
instead of relabelling), so the numbers compare agents, network sizes, modes and devices,
not data quality. The timed call is :meth:`zsrl.engine.Engine.step` — sampling, update,
targets and metrics in one (optionally compiled / CUDA-graphed) step — exactly what ``zsrl train`` runs.
``compile`` / ``cudagraphs`` follow the preset (``auto``: on for CUDA) unless ``--compile`` /
``--cudagraphs`` (``true``, ``false``, ``auto``) say otherwise.

Achieved TFLOP/s = (FLOPs of one update, counted with ``torch.utils.flop_counter`` on an
eager update: matmuls of forward and backward, which dominate) × updates/s.

``--scaling`` adds a table of updates/s and TFLOP/s against batch size (256 … 8192) and
network width (``--widths``, scaling every hidden width of the preset); ``--inference``
times reward prompting: ``z`` from 50,000 reward-labelled states; ``--profile N`` prints
where the time of N steps goes (torch.profiler); ``--compare VARIANT …`` times variants of
the first preset against it in interleaved blocks (ratios block by block, robust to a shared
machine's drift). Prints tables and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from zsrl.config import RunConfig, load_run_config
from zsrl.data import OfflineDataset, env_dims, from_numpy
from zsrl.engine import Engine
from zsrl.envs import make_domain
from zsrl.registry import agent_class
from zsrl.training import build_agent, configure_device
from zsrl.utils import resolve_device, seed_everything, versions

#: config keys that set a hidden width, per agent (scaled by --widths)
WIDTH_KEYS = {
    "fb": ("hidden_dim", "embedding_dim", "backward_hidden_dim"),
    "fbm": ("hidden_dim", "embedding_dim", "backward_hidden_dim", "memory_dim"),
    "fbstack": ("hidden_dim", "embedding_dim", "backward_hidden_dim"),
    "fre": ("hidden_dim",),
    "hilp": ("hidden_dim", "embedding_dim", "phi_hidden_dim"),
    "td3": ("hidden_dim",),
}


def random_dataset(obs_dim: int, action_dim: int, n: int, device: torch.device) -> OfflineDataset:
    rng = np.random.default_rng(0)
    arrays = {
        "observation": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        "next_observation": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "terminated": np.zeros(n, dtype=bool),
        "episode": np.arange(n) // 1000,
        "step": np.arange(n) % 1000,
    }
    return from_numpy(arrays, {"domain": "bench"}).to(device)


def domain_dims(domain_name: str) -> tuple[int, int]:
    """``(obs_dim, action_dim)`` of a domain by name (:func:`zsrl.data.env_dims`)."""
    return env_dims(make_domain(domain_name))


def prepare_engine(cfg: RunConfig, data: OfflineDataset, device: torch.device, precision: str | None = None) -> Engine:
    """The engine of an agent on random data, set up, its fast path chosen as ``zsrl train``
    does."""
    if agent_class(cfg.agent.name).needs_task and not cfg.task:
        cfg.task = "random"  # the oracle relabels with a task reward; here rewards are random
    agent = build_agent(cfg, data.obs_dim, data.action_dim, device)
    if agent.needs_task:
        agent.rewards = torch.rand(len(data), device=device)
    else:
        agent.setup(data, None)
    compile_step, cudagraphs = configure_device(cfg.train, device)
    return Engine(agent, compile=compile_step, cudagraphs=cudagraphs, precision=precision or cfg.train.precision)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def update_flops(cfg: RunConfig, data: OfflineDataset, device: torch.device) -> float:
    """FLOPs of one eager update (forward + backward matmuls) of a fresh agent."""
    from torch.utils.flop_counter import FlopCounterMode

    agent = prepare_engine(cfg, data, device, "fp32").agent
    Engine(agent)  # eager
    batch = agent.sample_batch(data, cfg.train.batch_size)
    with FlopCounterMode(display=False) as counter:
        agent.update(batch)
    return float(counter.get_total_flops())


def time_steps(engine: Engine, data: OfflineDataset, batch_size: int, steps: int, warmup: int) -> float:
    """Updates/s of ``engine.step`` after ``warmup`` steps (compilation, graph capture)."""
    device = engine.agent.device
    out = None
    for _ in range(warmup):
        out = engine.step(data, batch_size)
    if out is not None:
        out.sum().item()  # sync
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = engine.step(data, batch_size)
    out.sum().item()
    sync(device)
    return steps / (time.perf_counter() - t0)


def seeded_setup(preset: str, overrides: list[str]) -> tuple[RunConfig, OfflineDataset, Engine]:
    """``(config, random dataset of 100,000 transitions, engine)`` of ``preset``, seeded with 0."""
    cfg = load_run_config(preset, overrides)
    device = resolve_device(cfg.train.device)
    seed_everything(0)
    data = random_dataset(*domain_dims(cfg.domain), 100_000, device)
    return cfg, data, prepare_engine(cfg, data, device)


def bench(preset: str, overrides: list[str], steps: int, warmup: int, flops: bool = True) -> dict:
    cfg, data, engine = seeded_setup(preset, overrides)
    device = engine.agent.device
    ups = time_steps(engine, data, cfg.train.batch_size, steps, warmup)
    flop = update_flops(cfg, data, device) if flops else float("nan")
    params = sum(p.numel() for p in engine.agent.model.parameters())
    return {
        "preset": preset, "overrides": overrides, "device": str(device), "batch_size": cfg.train.batch_size,
        "compile": engine.compile, "cudagraphs": engine.cudagraphs, "precision": engine.precision,
        "parameters": params, "updates_per_s": ups, "steps": steps, "gflop_per_update": flop / 1e9,
        "tflops": flop * ups / 1e12,
    }


def compare(preset: str, overrides: list[str], variants: list[str], steps: int, warmup: int,
            blocks: int) -> list[dict]:
    """Updates/s of ``preset`` as configured and of each variant (a string of overrides),
    timed in turn — A B C A B C … — in ``blocks`` blocks of ``steps`` steps in one process.
    The ratio to the preset is taken block by block, so the drift of a shared machine cancels;
    ``first_steps_s`` is the time of the ``warmup`` steps before (compilation included)."""
    runs = []
    for variant in ["", *variants]:
        cfg, data, engine = seeded_setup(preset, [*overrides, *variant.split()])
        t0 = time.perf_counter()
        time_steps(engine, data, cfg.train.batch_size, 1, max(warmup - 1, 0))
        runs.append({"variant": variant or "(as configured)", "engine": engine, "data": data,
                     "batch_size": cfg.train.batch_size, "first_steps_s": time.perf_counter() - t0, "ups": []})
    for _ in range(blocks):
        for run in runs:
            run["ups"].append(time_steps(run["engine"], run["data"], run["batch_size"], steps, 0))
    base = np.array(runs[0]["ups"])
    rows = []
    for run in runs:
        ratios = np.array(run["ups"]) / base
        rows.append({
            "preset": preset, "variant": run["variant"], "compile": run["engine"].compile,
            "updates_per_s": float(np.median(run["ups"])), "ratio": float(np.median(ratios)),
            "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
            "first_steps_s": run["first_steps_s"], "blocks": blocks, "steps": steps, "threads": torch.get_num_threads(),
        })
    return rows


def print_comparison(rows: list[dict]) -> None:
    print(f"{rows[0]['preset']}: median of {rows[0]['blocks']} interleaved blocks of {rows[0]['steps']} steps, "
          f"{rows[0]['threads']} threads")
    print(f"{'variant':<48} {'compile':>8} {'upd/s':>8} {'ratio':>6} {'(min-max)':>12} {'first steps':>12}")
    for r in rows:
        print(f"{r['variant']:<48} {r['compile']!s:>8} {r['updates_per_s']:>8.1f} {r['ratio']:>6.2f} "
              f"{r['ratio_min']:>5.2f}-{r['ratio_max']:<5.2f} {r['first_steps_s']:>11.1f}s")


def time_reward_inference(preset: str, overrides: list[str], n: int = 50_000, repeats: int = 10) -> dict:
    """Median wall time of ``model.infer_z_from_rewards`` on ``n`` labelled states."""
    cfg = load_run_config(preset, overrides)
    device = resolve_device(cfg.train.device)
    obs_dim, action_dim = domain_dims(cfg.domain)
    data = random_dataset(obs_dim, action_dim, max(n, 1024), device)
    model = prepare_engine(cfg, data, device).agent.model.eval()
    obs, rewards = torch.randn(n, obs_dim, device=device), torch.rand(n, device=device)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        z = model.infer_z_from_rewards(obs, rewards)
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"preset": preset, "samples": n, "device": str(device), "z_shape": list(z.shape),
            "median_ms": float(np.median(times[1:]) * 1e3)}


def profile_steps(preset: str, overrides: list[str], steps: int, warmup: int, path: str | None) -> str:
    """torch.profiler table of ``steps`` train steps (CPU and, on CUDA, kernel times).

    Under CUDA graphs the profiler sees one graph launch per step, so profile with
    ``--cudagraphs false`` to see the kernels.
    """
    from torch.profiler import ProfilerActivity, profile

    cfg = load_run_config(preset, overrides)
    device = resolve_device(cfg.train.device)
    obs_dim, action_dim = domain_dims(cfg.domain)
    data = random_dataset(obs_dim, action_dim, 100_000, device)
    engine = prepare_engine(cfg, data, device)
    for _ in range(warmup):
        engine.step(data, cfg.train.batch_size)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            engine.step(data, cfg.train.batch_size)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30)
    if path:
        prof.export_chrome_trace(path)
    return table


def _width_overrides(preset: str, scale: float) -> list[str]:
    cfg = load_run_config(preset)
    keys = WIDTH_KEYS.get(cfg.agent.name, ())
    return [f"agent.{k}={max(8, round(getattr(cfg.agent, k) * scale))}" for k in keys]


def scaling(preset: str, overrides: list[str], batches: list[int], widths: list[float], steps: int,
            warmup: int) -> list[dict]:
    rows = []
    for scale in widths:
        for b in batches:
            ov = [*overrides, *_width_overrides(preset, scale), f"train.batch_size={b}"]
            row = bench(preset, ov, steps, warmup)
            row["width_scale"] = scale
            rows.append(row)
            print(f"  width×{scale:<4} batch {b:>5}: {row['updates_per_s']:9.1f} upd/s "
                  f"{row['tflops']:7.3f} TFLOP/s", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'preset':<24} {'device':<7} {'batch':>6} {'params':>10} {'compile':>8} {'graphs':>7} "
          f"{'prec':>5} {'upd/s':>9} {'GFLOP/upd':>10} {'TFLOP/s':>8}")
    for r in rows:
        print(f"{r['preset']:<24} {r['device']:<7} {r['batch_size']:>6} {r['parameters']:>10,} "
              f"{r['compile']!s:>8} {r['cudagraphs']!s:>7} {r['precision']:>5} {r['updates_per_s']:>9.1f} "
              f"{r['gflop_per_update']:>10.2f} {r['tflops']:>8.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["fb/point_mass_maze_cpu", "fb/point_mass_maze"])
    p.add_argument("--batch-size", type=int, help="override every preset's batch size")
    p.add_argument("--device", default=None, help="override every preset's device (cpu, cuda, auto)")
    p.add_argument("--compile", default=None, choices=["true", "false", "auto"])
    p.add_argument("--cudagraphs", default=None, choices=["true", "false", "auto"])
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--scaling", action="store_true", help="upd/s and TFLOP/s vs batch size and width")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    p.add_argument("--widths", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--inference", action="store_true", help="time z from 50,000 reward-labelled states")
    p.add_argument("--inference-samples", type=int, default=50_000)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="print a torch.profiler table of N steps of the first preset")
    p.add_argument("--trace", help="with --profile: also write a Chrome trace here")
    p.add_argument("--compare", nargs="+", metavar="VARIANT", default=None,
                   help="variants of the first preset, each a quoted string of overrides (e.g. "
                        "'train.compile=true'), timed against it in interleaved blocks")
    p.add_argument("--blocks", type=int, default=10, help="with --compare: blocks of --steps steps each")
    p.add_argument("--json", default="bench_updates.json")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every preset")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides)
    for flag in ("batch_size", "device", "compile", "cudagraphs", "precision"):
        value = getattr(args, flag)
        if value:
            overrides.append(f"train.{flag}={value}")
    if args.compare:
        rows = compare(args.presets[0], overrides, args.compare, args.steps, args.warmup, args.blocks)
        print_comparison(rows)
        with open(args.json, "w") as f:
            json.dump({"comparison": rows, "versions": versions()}, f, indent=2)
        return
    rows = [bench(preset, overrides, args.steps, args.warmup) for preset in args.presets]
    print_table(rows)
    out: dict[str, Any] = {"results": rows, "versions": versions(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    if args.scaling:
        out["scaling"] = {}
        for preset in args.presets:
            print(f"scaling {preset}:")
            no_batch = [o for o in overrides if not o.startswith("train.batch_size=")]
            out["scaling"][preset] = scaling(preset, no_batch, args.batches, args.widths, args.steps, args.warmup)
    if args.inference:
        out["inference"] = []
        for preset in args.presets:
            r = time_reward_inference(preset, overrides, args.inference_samples)
            out["inference"].append(r)
            print(f"reward inference {preset}: z from {r['samples']:,} labelled states in "
                  f"{r['median_ms']:.2f} ms (median, {r['device']})")
    if args.profile:
        table = profile_steps(args.presets[0], overrides, args.profile, args.warmup, args.trace)
        print(f"profile of {args.profile} steps of {args.presets[0]}:\n{table}")
        out["profile"] = table
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
