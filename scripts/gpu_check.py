"""GPU check: every agent preset, in every execution mode, trains, agrees with eager, and how fast.

    python scripts/gpu_check.py                       # on a CUDA machine: the full check
    python scripts/gpu_check.py --device cpu --sizes tiny --updates 20 --agents fb   # smallest

For each agent (``fb``, ``fb:hindsight`` with FB's hindsight goals, ``fb:joint`` / ``fb:sequential`` with FB's joint or sequential update — a key whose
config is another key's, e.g. ``fb:sequential`` where the preset is sequential, is skipped —
``fre`` in its encoder phase, ``fre:policy`` in its policy phase,
``hilp``, ``td3``, ``vcfb``, ``mcfb``) on one domain (``--domain``, default walker), at the published size (the
``<agent>/<domain>`` preset) and a tiny size, and each mode

    eager       no compile, no CUDA graphs
    compile     torch.compile
    cudagraphs  CUDA graph of the whole step (sampling, update, targets, metrics)
    both        compile + CUDA graphs (the CUDA default of ``zsrl train``)
    bf16        the device's default fast path with bf16 autocast

it (1) checks agreement with eager: from identical parameters, optimiser state and random
state, the metrics of one update and the parameters after it must match within a stated
tolerance (fp32 on CPU 1e-4; TF32 on CUDA 2e-2; bf16, against fp32 eager, 5e-2; relative to the
metric plus 1e-3, or 0.1 for bf16, whose signed diagnostics can cancel to near 0; for parameters
plus an absolute 2·lr, as Adam moves a parameter by about lr whatever the gradient's size); (2) trains
``--updates`` updates on random data and asserts every logged metric is finite (and, when
compiled, that dynamo produced graphs and never fell back to eager); (3) times the updates
and reports updates/s and achieved TFLOP/s (FLOPs of one update counted on an eager update).
The compiled agent timed here is the one checked, so its random numbers come from eager
kernels (``fallback_random``); ``bench_updates.py`` times the default compiled code. CUDA graph modes are skipped on a CPU with a printed reason. Prints a table
with the device and versions and writes JSON (``--json``). Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

warnings.filterwarnings("ignore", category=FutureWarning, module="torch._inductor")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_updates import domain_dims, prepare_engine, random_dataset, sync, update_flops

from zsrl.config import RunConfig, load_run_config
from zsrl.engine import Engine
from zsrl.utils import resolve_device, versions

MODES = {  # name -> (compile, cudagraphs, precision); None: the device default
    "eager": (False, False, "fp32"),
    "compile": (True, False, "fp32"),
    "cudagraphs": (False, True, "fp32"),
    "both": (True, True, "fp32"),
    "bf16": (None, None, "bf16"),
}
#: agent -> (preset agent name, extra overrides)
AGENTS = {
    "fb": ("fb", []),
    "fb:hindsight": ("fb", ["agent.goal_from_trajectory=0.5"]),
    "fb:joint": ("fb", ["agent.joint_update=true"]),
    "fb:sequential": ("fb", ["agent.joint_update=false"]),
    "fre": ("fre", []),
    "fre:policy": ("fre", ["agent.encoder_steps=0"]),
    "hilp": ("hilp", []),
    "td3": ("td3", []),
    "td3:ema": ("td3", ["agent.ema_decay=0.99"]),  # the parameter average inside the compiled step
    "fb:ema": ("fb", ["agent.ema_decay=0.99"]),
    "vcfb": ("vcfb", []),
    "mcfb": ("mcfb", []),
    "fbm": ("fbm", []),  # GRUs over histories gathered inside the step
    "fbstack": ("fbstack", []),
}
TINY = {
    "fb": ["agent.z_dim=16", "agent.hidden_dim=64", "agent.embedding_dim=32", "agent.backward_hidden_dim=64"],
    "fre": ["agent.z_dim=16", "agent.hidden_dim=64", "agent.emb_dim=32", "agent.mlp_dim=64",
            "agent.num_random_nets=64", "agent.context_size=8", "agent.trajectory_context=4",
            "agent.prompt_bank_size=64"],
    "hilp": ["agent.z_dim=16", "agent.hidden_dim=64", "agent.embedding_dim=32", "agent.phi_hidden_dim=64"],
    "td3": ["agent.hidden_dim=64"],
}
TINY["vcfb"] = TINY["mcfb"] = TINY["fb"]
TINY["fbm"] = TINY["fbstack"] = [*TINY["fb"], "agent.memory_dim=32", "agent.history=8", "agent.backward_history=4"]


class _GaveUp(logging.Handler):
    """Collects dynamo's "hit recompile_limit" warnings (after which it runs eagerly)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "recompile_limit" in record.getMessage():
            self.records.append(record.getMessage()[:200])


_DYNAMO_GAVE_UP = _GaveUp()
logging.getLogger("torch._dynamo").addHandler(_DYNAMO_GAVE_UP)


def _params(agent: Any) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v.detach().clone() for m, mod in agent.modules().items()
            for k, v in mod.state_dict().items() if v.is_floating_point()}


def _lr(agent: Any) -> float:
    return max(g["lr"] for o in agent.optimizers().values() for g in o.param_groups)


def tolerance(device: torch.device, precision: str) -> float:
    if precision == "bf16":
        return 5e-2
    return 2e-2 if device.type == "cuda" else 1e-4


def metric_floor(precision: str) -> float:
    """The absolute floor of a metric's relative error: bf16 keeps about 3 significant digits
    of each term, so a mean that cancels to near zero (a signed diagnostic) keeps an absolute
    error of about 1e-3 of its terms' size, not of its own."""
    return 0.1 if precision == "bf16" else 1e-3


def agreement(cfg: Any, data: Any, device: torch.device, mode: tuple, warmup: int) -> tuple[dict, Any]:
    """Max relative differences to eager of one update's metrics and resulting parameters.

    Returns them with the compiled / graphed agent, warmed up and one step further, which
    the caller goes on timing (one compilation per run: they take most of the check's time), as
    an :class:`~zsrl.engine.Engine`.
    Its compiled code draws eager's random numbers (inductor ``fallback_random``), so that
    both sides see the same batch, z and noise.
    """
    import torch._inductor.config as inductor_config

    compile_step, graphs, precision = mode
    batch = cfg.train.batch_size
    with inductor_config.patch(fallback_random=True):  # compiled code draws eager's random numbers
        torch.manual_seed(0)
        fast = prepare_engine(cfg, data, device, precision)
        fast = Engine(fast.agent, compile=compile_step, cudagraphs=graphs, precision=precision)
        t0 = time.perf_counter()
        for _ in range(warmup):  # compile and capture first: their state is then copied to eager
            fast.step(data, batch)
        sync(device)
        warmup_s = time.perf_counter() - t0
        ref = Engine(prepare_engine(cfg, data, device, "fp32").agent)  # bf16 is measured against fp32 eager
        ref.agent.load_state_dict(copy.deepcopy(fast.agent.state_dict()))  # FRE's phase counter too
        if getattr(fast.agent, "rewards", None) is not None:  # the oracle's (random) rewards
            ref.agent.rewards = fast.agent.rewards
        out = {}
        for name, engine in (("ref", ref), ("fast", fast)):
            torch.manual_seed(1234)
            out[name] = (engine.step(data, batch).float(), _params(engine.agent))
    (m_ref, p_ref), (m_fast, p_fast) = out["ref"], out["fast"]
    floor = metric_floor(precision)
    metric_err = ((m_fast - m_ref).abs() / (m_ref.abs() + floor)).max().item()
    atol = 2 * _lr(ref.agent)
    param_err = max(
        (((p_fast[k] - p_ref[k]).abs() - atol).clamp_min(0) / (p_ref[k].abs() + 1e-3)).max().item()
        for k in p_ref
    )
    bad = [n for n, a, b in zip(ref.metric_names, m_ref.tolist(), m_fast.tolist())
           if abs(a - b) / (abs(a) + floor) > tolerance(device, precision)]
    return {"metric_rel_err": metric_err, "param_rel_err": param_err, "metrics_bad": bad,
            "warmup_s": warmup_s, "first_metrics": m_fast}, fast


def resolve(agent_key: str, size: str, args: argparse.Namespace, device: torch.device) -> tuple[str, RunConfig]:
    """The preset name and the run config that ``agent_key`` at ``size`` checks."""
    name, extra = AGENTS[agent_key]
    preset = f"{name}/{args.domain}"
    overrides = [*extra, f"train.device={device}"]
    if size == "tiny":
        overrides += [*TINY[name], f"train.batch_size={args.tiny_batch}"]
    return preset, load_run_config(preset, overrides)


def run_one(agent_key: str, size: str, mode_name: str, args: argparse.Namespace, device: torch.device) -> dict:
    preset, cfg = resolve(agent_key, size, args, device)
    compile_step, graphs, precision = MODES[mode_name]
    auto = device.type == "cuda"
    mode = (auto if compile_step is None else compile_step, auto if graphs is None else graphs, precision)
    row: dict[str, Any] = {"agent": agent_key, "size": size, "mode": mode_name, "preset": preset,
                           "batch_size": cfg.train.batch_size, "compile": mode[0], "cudagraphs": mode[1],
                           "precision": precision}
    if mode[1] and device.type != "cuda":
        row["skipped"] = "CUDA graphs need a CUDA device"
        return row
    obs_dim, action_dim = domain_dims(cfg.domain)
    data = random_dataset(obs_dim, action_dim, args.dataset_size, device)
    warmup = args.warmup
    # fresh compile caches per run: every agent is a new set of guards, and dynamo silently
    # runs eagerly once a function has been recompiled recompile_limit times
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _DYNAMO_GAVE_UP.records.clear()
    if mode_name != "eager":
        agree, engine = agreement(cfg, data, device, mode, warmup)
        first = agree.pop("first_metrics")
        tol = tolerance(device, precision)
        row.update(agree, tolerance=tol,
                   agrees=agree["metric_rel_err"] <= tol and agree["param_rel_err"] <= tol)
    else:
        torch.manual_seed(0)
        engine = Engine(prepare_engine(cfg, data, device, precision).agent, precision=precision)
        t0 = time.perf_counter()
        first = engine.step(data, cfg.train.batch_size)
        for _ in range(warmup - 1):
            engine.step(data, cfg.train.batch_size)
        sync(device)
        row["warmup_s"] = time.perf_counter() - t0
    row["parameters"] = sum(p.numel() for p in engine.agent.model.parameters())
    acc, finite = first.clone(), torch.isfinite(first).all()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.updates):
        m = engine.step(data, cfg.train.batch_size)
        acc.add_(m)
        finite &= torch.isfinite(m).all()
    finite = bool(finite)  # the one sync of the timed loop
    sync(device)
    ups = args.updates / (time.perf_counter() - t0)
    flops = update_flops(cfg, data, device)
    if mode[0]:  # compiled for real: dynamo produced graphs and never gave up on a frame
        row["compiled_graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        row["recompile_limit_hits"] = len(_DYNAMO_GAVE_UP.records)
        finite = finite and row["compiled_graphs"] > 0 and not _DYNAMO_GAVE_UP.records
    row.update(updates_per_s=ups, gflop_per_update=flops / 1e9, tflops=flops * ups / 1e12, finite=finite,
               mean_metrics=dict(zip(engine.metric_names, (acc / (args.updates + 1)).tolist())))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--domain", default="walker")
    p.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    p.add_argument("--sizes", nargs="+", default=["published", "tiny"], choices=["published", "tiny"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--updates", type=int, default=300)
    p.add_argument("--warmup", type=int, default=5, help="steps before timing (compile, graph capture)")
    p.add_argument("--tiny-batch", type=int, default=256)
    p.add_argument("--dataset-size", type=int, default=100_000)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", default="gpu_check.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    info = {"device": str(device), "versions": versions(), "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "tf32": device.type == "cuda"}
    print(f"# device {info['device_name']} ({device}); torch {torch.__version__}; "
          f"CUDA {torch.version.cuda}; versions {json.dumps(info['versions'])}", flush=True)
    rows, failed = [], []
    checked: dict[str, str] = {}  # resolved config -> the agent key that checks it
    for agent_key in args.agents:
        for size in args.sizes:
            same_as = _first_key_with_config(checked, agent_key, size, args, device)
            for mode_name in args.modes:
                label = f"{agent_key}/{size}/{mode_name}"
                try:
                    if same_as != agent_key:  # e.g. fb:sequential where the preset's update is sequential
                        row = {"agent": agent_key, "size": size, "mode": mode_name,
                               "skipped": f"the same config as {same_as}"}
                    else:
                        row = run_one(agent_key, size, mode_name, args, device)
                except Exception as exc:  # noqa: BLE001 -- report every failure, then exit 1
                    row = {"agent": agent_key, "size": size, "mode": mode_name, "error": repr(exc),
                           "traceback": traceback.format_exc()}
                    print(row["traceback"], file=sys.stderr)
                rows.append(row)
                ok = "skipped" in row or (row.get("finite") and row.get("agrees", True) and "error" not in row)
                if not ok:
                    failed.append(label)
                _print_row(row)
    with open(args.json, "w") as f:
        json.dump({**info, "results": rows, "failed": failed}, f, indent=2)
    print(f"# {len(rows)} runs, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
          f"JSON in {args.json}")
    return 1 if failed else 0


def _first_key_with_config(
    checked: dict[str, str], agent_key: str, size: str, args: argparse.Namespace, device: torch.device
) -> str:
    """The first agent key (``agent_key`` if none before it) whose resolved config at ``size``
    is ``agent_key``'s; ``checked`` maps each config seen to that key. A config that cannot be
    resolved is ``agent_key``'s own: :func:`run_one` then reports the error for every mode."""
    try:
        config = json.dumps(asdict(resolve(agent_key, size, args, device)[1]), sort_keys=True, default=str)
    except Exception:  # noqa: BLE001 -- reported by run_one, per mode
        return agent_key
    return checked.setdefault(config, agent_key)


def _print_row(r: dict) -> None:
    head = f"{r['agent']:<11} {r['size']:<9} {r['mode']:<10}"
    if "skipped" in r:
        print(f"{head} skipped: {r['skipped']}", flush=True)
    elif "error" in r:
        print(f"{head} ERROR {r['error']}", flush=True)
    else:
        agree = "-" if "agrees" not in r else (
            f"{'ok' if r['agrees'] else 'MISMATCH'} (metrics {r['metric_rel_err']:.1e}, "
            f"params {r['param_rel_err']:.1e} ≤ {r['tolerance']:.0e})")
        print(f"{head} batch {r['batch_size']:>5} {r['updates_per_s']:>9.1f} upd/s "
              f"{r['tflops']:>7.3f} TFLOP/s  finite={r['finite']}  warmup {r['warmup_s']:.1f}s  "
              f"agreement {agree}", flush=True)
        if r.get("metrics_bad"):
            print(f"{'':<32} metrics beyond tolerance: {r['metrics_bad']}", flush=True)
    if not math.isfinite(r.get("updates_per_s", 0.0)):
        print(f"{head} non-finite timing", flush=True)


if __name__ == "__main__":
    sys.exit(main())
