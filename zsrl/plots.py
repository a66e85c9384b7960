"""Pictures of runs and evaluations: learning curves, return bars, maze paths, videos.

Every function takes data and an output path, renders the picture in memory, writes it
with :func:`zsrl.storage.atomic_write_bytes` (a reader never sees a half-written file) and
returns the path as a :class:`~pathlib.Path`. Figures are drawn on the Agg canvas directly
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), never through ``pyplot``: nothing is
registered in pyplot's global figure list, the process-wide backend of a notebook or GUI
is left alone, and each figure is cleared and dropped after saving. The image format
follows the path's suffix (``.png`` by default; ``.pdf`` and ``.svg`` work too).

* :func:`learning_curves` — every metric of ``RUN_DIR/metrics.csv`` and the periodic
  returns of ``RUN_DIR/eval.csv`` against the update step;
* :func:`task_bars` — zero-shot return per task for one or several agents, with 95%
  bootstrap confidence intervals and optional oracle returns;
* :func:`maze_trajectories` — rollout paths in the point-mass maze, one panel per prompt;
* :func:`policy_video` — an mp4 (or gif) of one evaluated episode, replayed from its rollout;
* :func:`benchmark_bars` — a benchmark table, one panel per domain.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from zsrl.stats import bootstrap_ci
from zsrl.storage import atomic_write_bytes

if TYPE_CHECKING:
    from zsrl.envs.base import Domain
    from zsrl.evaluation import Rollout

__all__ = [
    "benchmark_bars",
    "learning_curves",
    "maze_trajectories",
    "policy_video",
    "task_bars",
]

_DPI = 120
#: columns of metrics.csv that are not plotted against the step
_NOT_METRICS = ("step", "time")
#: y-axis labels of metrics that have a unit
_UNITS = {"updates_per_s": "updates / s"}
_RETURN_LABEL = "episode return (sum of rewards)"


# ---- shared helpers ------------------------------------------------------------------
def _figure(nrows: int, ncols: int, panel: tuple[float, float], **subplot_kw: Any):
    """A constrained-layout Figure on an Agg canvas and its ``(nrows, ncols)`` axes array."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` panels, at most ``max_cols`` wide, rows filled evenly."""
    nrows = math.ceil(max(1, n) / max_cols)
    return nrows, math.ceil(max(1, n) / nrows)


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to bytes in the format of ``path``'s suffix, write atomically, free it."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=_DPI)
    finally:
        fig.clear()
    atomic_write_bytes(path, buf.getvalue())
    return path


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _value_label(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.3g}"


def _tick_labels(ax: Any, labels: Sequence[str]) -> None:
    """Task names on the x axis, slanted when they would overlap."""
    ax.set_xticks(np.arange(len(labels)))
    slant = len(labels) > 4 or max((len(s) for s in labels), default=0) > 14
    ax.set_xticklabels(labels, rotation=30 if slant else 0, ha="right" if slant else "center",
                       fontsize=8)


def _grouped_bars(
    ax: Any,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], Any, dict[str, Any]]],
    errors: Sequence[np.ndarray | None] | None = None,
    value_labels: bool = True,
) -> None:
    """One group of bars per category, one bar per series ``(label, values, color, style)``."""
    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for i, (label, values, color, style) in enumerate(series):
        values = np.asarray(values, dtype=np.float64)
        have = np.isfinite(values)  # a missing value leaves a gap, not a zero bar
        yerr = None if errors is None or errors[i] is None else errors[i][:, have]
        bars = ax.bar(x[have] + (i - (len(series) - 1) / 2) * width, values[have], width,
                      label=label, color=color, yerr=yerr, capsize=3 if yerr is not None else 0,
                      error_kw={"elinewidth": 1, "ecolor": "black"}, **style)
        if value_labels and len(categories) * len(series) <= 24:
            ax.bar_label(bars, labels=[_value_label(v) for v in values[have]], fontsize=6,
                         padding=2)
    _tick_labels(ax, categories)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV as float arrays (blank or non-numeric cells become NaN), by step."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if not fields or not rows:
        return {}
    if "step" not in fields:
        raise ValueError(f"{path} has no 'step' column; columns are: {', '.join(fields)}")
    cols = {k: np.array([_num(row.get(k)) for row in rows]) for k in fields}
    order = np.argsort(cols["step"], kind="stable")
    return {k: v[order] for k, v in cols.items()}


# ---- 1. learning curves ----------------------------------------------------------------
def learning_curves(run_dir: str | Path, path: str | Path) -> Path:
    """Every metric logged during training against the update step, one panel each.

    Reads ``RUN_DIR/metrics.csv`` (one panel per column except ``step`` and ``time``:
    losses, diagnostics and ``updates_per_s``) and, when present, ``RUN_DIR/eval.csv``,
    drawn as the first panel with one line per evaluated task (mean zero-shot return).
    Columns that hold no number at all are skipped.

    Raises:
        ValueError: ``metrics.csv`` is missing, empty (header only) or has no ``step``
            column, or holds no numeric metric.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.csv"
    if not metrics_path.is_file():
        raise ValueError(
            f"{metrics_path} does not exist: is {run_dir} a zsrl run directory? Training "
            "writes metrics.csv every train.log_every updates."
        )
    metrics = _read_csv(metrics_path)
    if not metrics:
        raise ValueError(
            f"{metrics_path} has no rows yet: training logs its first row after "
            "train.log_every updates"
        )
    names = [k for k in metrics if k not in _NOT_METRICS and np.isfinite(metrics[k]).any()]
    if not names:
        raise ValueError(f"{metrics_path} has no numeric metric column to plot")

    eval_path = run_dir / "eval.csv"
    evals = _read_csv(eval_path) if eval_path.is_file() else {}
    eval_names = [k for k in evals if k != "step" and np.isfinite(evals[k]).any()]

    panels = len(names) + (1 if eval_names else 0)
    nrows, ncols = _grid(panels, 4)
    fig, axes = _figure(nrows, ncols, (3.6, 2.6))
    flat = list(axes.flat)
    step = metrics["step"]
    markers = "." if len(step) <= 50 else None

    if eval_names:
        ax = flat.pop(0)
        for name, color in zip(eval_names, _colors(len(eval_names))):
            ax.plot(evals["step"], evals[name], marker="o", markersize=3, color=color,
                    label=name.removeprefix("return/"))
        ax.set_title("zero-shot return (eval.csv)", fontsize=9, fontweight="bold")
        ax.set_ylabel("mean episode return", fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    for ax, name in zip(flat, names):
        ax.plot(step, metrics[name], marker=markers, markersize=3, linewidth=1.2, color="tab:blue")
        ax.set_title(name, fontsize=9)
        if name in _UNITS:
            ax.set_ylabel(_UNITS[name], fontsize=8)
    for ax in axes.flat[:panels]:
        ax.set_xlabel("update step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    _hide_unused(axes, panels)
    fig.suptitle(f"Learning curves — {run_dir.resolve().name}", fontsize=11)
    return _save(fig, path)


# ---- 2. per-task bars --------------------------------------------------------------------
def _is_results(obj: Any) -> bool:
    """Whether ``obj`` looks like one ``zsrl eval`` results dict (vs {agent: results})."""
    tasks = obj.get("tasks") if isinstance(obj, Mapping) else None
    return isinstance(tasks, Mapping) and all(
        isinstance(t, Mapping) and "mean_return" in t for t in tasks.values()
    )


def _agents(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    if _is_results(results):
        return {str(results.get("agent") or "agent"): results}
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a zsrl eval results dict or a non-empty {agent: results}")
    for name, res in results.items():
        if not _is_results(res):
            raise ValueError(
                f"results[{name!r}] is not a zsrl eval results dict (it needs a 'tasks' mapping "
                "of {task: {'mean_return': ..., 'returns': [...]}})"
            )
    return {str(k): v for k, v in results.items()}


def _ci95(returns: Sequence[float] | None, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile-bootstrap CI of the mean of ``returns`` (None for fewer than 2)."""
    if returns is None or len(returns) < 2:
        return None
    # runs = episodes, tasks = 1: bootstrap_ci resamples the episodes with replacement.
    scores = np.asarray(returns, dtype=np.float64).reshape(-1, 1)
    return bootstrap_ci(scores, np.mean, seed=seed)


def task_bars(
    results: Mapping[str, Any],
    path: str | Path,
    oracle: Mapping[str, float] | None = None,
) -> Path:
    """Mean zero-shot return per task, with 95% confidence intervals.

    Args:
        results: one results dict as written by ``zsrl eval`` (``results["tasks"][task]``
            has ``"mean_return"`` and ``"returns"``), or ``{agent_name: results}`` to
            compare several agents side by side (the agents should share tasks; a task an
            agent lacks leaves a gap).
        path: output image (``.png``, ``.pdf`` or ``.svg``).
        oracle: optional ``{task: mean_return}`` of a reference (e.g. a supervised TD3 per
            task), drawn as a hatched grey bar without an interval.

    Bars are ``mean_return``. Whiskers are the 95% percentile bootstrap CI of the mean over
    the task's episode returns pooled across seeds (``zsrl.stats.bootstrap_ci`` on the
    ``(episodes, 1)`` matrix: 2000 resamples of the episodes with replacement, seed 0).
    Episodes of one seed share that seed's inferred ``z``, so with several seeds this
    interval understates the seed-to-seed variation; tasks with fewer than two returns get
    no whisker.
    """
    agents = _agents(results)
    tasks: list[str] = []
    for res in agents.values():
        tasks += [t for t in res["tasks"] if t not in tasks]
    if not tasks:
        raise ValueError("the results hold no task returns to plot (goal-only evaluation?)")

    series, errors = [], []
    for (name, res), color in zip(agents.items(), _colors(len(agents))):
        means, err = [], np.full((2, len(tasks)), np.nan)  # NaN: no whisker
        for j, task in enumerate(tasks):
            entry = res["tasks"].get(task)
            mean = math.nan if entry is None else float(entry["mean_return"])
            means.append(mean)
            ci = None if entry is None else _ci95(entry.get("returns"))
            if ci is not None:
                err[:, j] = [max(0.0, mean - ci[0]), max(0.0, ci[1] - mean)]
        series.append((name, means, color, {}))
        errors.append(err)
    if oracle:
        series.append(("oracle", [_num(oracle.get(t)) for t in tasks], "lightgray",
                       {"hatch": "//", "edgecolor": "dimgray"}))
        errors.append(None)

    fig, axes = _figure(1, 1, (max(6.0, 1.0 + 0.45 * len(tasks) * len(series)), 3.8))
    ax = axes[0, 0]
    _grouped_bars(ax, tasks, series, errors)
    ax.set_xlabel("task")
    ax.set_ylabel(_RETURN_LABEL)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    entries = [t for r in agents.values() for t in r["tasks"].values()]
    counts = sorted({len(t.get("returns") or []) for t in entries})
    episodes = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    domains = sorted({str(r["domain"]) for r in agents.values() if r.get("domain")})
    title = ", ".join(agents) + (f" on {', '.join(domains)}" if domains else "")
    ax.set_title(
        f"Zero-shot return per task — {title}\n"
        f"bars: mean over {episodes} episodes (all seeds)\n"
        "whiskers: 95% bootstrap CI over episodes",
        fontsize=9,
    )
    return _save(fig, path)


# ---- 3. maze trajectories --------------------------------------------------------------------
def _paths(traj: Rollout) -> list[np.ndarray]:
    """Each episode's xy path: alive observations then the last next observation."""
    out = []
    for e in range(traj.alive.shape[1]):
        steps = np.flatnonzero(traj.alive[:, e])
        if steps.size == 0:
            continue
        xy = np.asarray(traj.observation[steps, e, :2], dtype=np.float64)
        out.append(np.concatenate([xy, traj.next_observation[steps[-1], e, None, :2]]))
    return out


def _known_goal(domain: Domain, prompt: str) -> np.ndarray | None:
    """The xy of the goal named ``prompt`` (or its last ':'/'/' part), if the domain has it."""
    goals = domain.goals
    for name in (prompt, prompt.replace(":", "/").rsplit("/", 1)[-1]):
        if name in goals:
            return np.asarray(goals[name], dtype=np.float64)[:2]
    return None


def maze_trajectories(
    domain: Domain,
    trajectories: Mapping[str, Rollout],
    path: str | Path,
    limit: float = 0.3,
) -> Path:
    """xy paths of rollouts over the maze layout, one panel per prompt.

    Args:
        domain: a domain with a floor plan (``has_layout``: walls and targets in the xy
            plane, e.g. ``point_mass_maze``) and, optionally, ``goals``.
        trajectories: ``{prompt_name: rollout}`` as returned by :func:`zsrl.evaluation.rollout`
            — the position is ``observation[..., :2]``; only alive steps are drawn, then each
            episode's final ``next_observation``.
        path: output image.
        limit: the panels show ``[-limit, limit]²`` (m) plus a 2 cm margin for the walls.

    Each episode is one coloured line, its start a circle and its end a cross. When the
    prompt name (or its part after the last ``:`` or ``/``) is one of ``domain.goals`` —
    the maze's tasks and goals share names (``reach_top_left``, ...) — that target is
    ringed with a star.
    """
    if not trajectories:
        raise ValueError("no trajectories to draw")
    nrows, ncols = _grid(len(trajectories), 4)
    fig, axes = _figure(nrows, ncols, (3.4, 3.5))
    margin = 0.02
    for ax, (prompt, traj) in zip(axes.flat, trajectories.items()):
        if domain.has_layout:
            domain.draw_layout(ax)
        paths = _paths(traj)
        for xy, color in zip(paths, _colors(len(paths))):
            ax.plot(xy[:, 0], xy[:, 1], color=color, linewidth=1.1, alpha=0.85, zorder=4)
            ax.plot(*xy[0], marker="o", markersize=5, color=color, markeredgecolor="black",
                    markeredgewidth=0.6, linestyle="none", zorder=5)
            ax.plot(*xy[-1], marker="X", markersize=7, color=color, markeredgecolor="black",
                    markeredgewidth=0.6, linestyle="none", zorder=5)
        goal = _known_goal(domain, prompt)
        if goal is not None:
            ax.plot(*goal, marker="*", markersize=14, color="gold", markeredgecolor="black",
                    linestyle="none", zorder=3.5)
        ax.set_xlim(-limit - margin, limit + margin)
        ax.set_ylim(-limit - margin, limit + margin)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)", fontsize=8)
        ax.set_ylabel("y (m)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"{prompt}\n{len(paths)} episode{'s' if len(paths) != 1 else ''}", fontsize=9)
    _hide_unused(axes, len(trajectories))
    handles = [
        _legend_marker("o", "start"),
        _legend_marker("X", "end"),
        _legend_marker("*", "goal", color="gold", size=12),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle(f"Rollouts in {domain.name or 'the maze'}", fontsize=11)
    return _save(fig, path)


def _legend_marker(marker: str, label: str, color: str = "white", size: float = 7) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], marker=marker, color=color, markeredgecolor="black", markersize=size,
                  linestyle="none", label=label)


# ---- 4. policy video ------------------------------------------------------------------
_RENDER_HELP = (
    "rendering failed ({exc}). For MuJoCo domains, headless rendering needs an OpenGL backend chosen "
    "before dm_control is first imported: set MUJOCO_GL=egl (needs libEGL: apt install "
    "libegl1, a GPU driver or Mesa) or MUJOCO_GL=osmesa (apt install libosmesa6). "
    "MUJOCO_GL is currently {gl!r}."
)


def _render_error(exc: BaseException | str) -> RuntimeError:
    return RuntimeError(_RENDER_HELP.format(exc=exc, gl=os.environ.get("MUJOCO_GL", "unset")))


def _frame(env: Any, size: tuple[int, int], even: bool) -> np.ndarray:
    """One rendered RGB frame, scaled to fit ``size`` ``(height, width)`` keeping its aspect."""
    try:
        frame = env.render()
    except Exception as exc:  # GL backends fail with many exception types
        raise _render_error(f"{type(exc).__name__}: {exc}") from exc
    if frame is None:
        raise _render_error("the environment returned no frame from render()")
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
        raise _render_error(f"render() returned an array of shape {frame.shape}, not an RGB image")
    frame = np.ascontiguousarray(frame[..., :3], dtype=np.uint8)
    scale = min(size[0] / frame.shape[0], size[1] / frame.shape[1])
    height, width = (max(1, round(n * scale)) for n in frame.shape[:2])
    if even:  # H.264 with yuv420p needs even dimensions
        height, width = height + height % 2, width + width % 2
    if frame.shape[:2] != (height, width):
        from PIL import Image

        frame = np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
    return frame


def policy_video(
    domain: Domain,
    rollout: Rollout,
    path: str | Path,
    episode: int = 0,
    task: str | None = None,
    fps: int = 30,
    size: tuple[int, int] = (240, 320),
    frame_stride: int = 2,
) -> Path:
    """Film one evaluated episode as an mp4 (or a gif) by replaying its actions.

    Args:
        domain: builds the environment with ``domain.make_render_env(seed, task, size)``.
        rollout: the episodes of one prompt from :func:`zsrl.evaluation.rollout`; episode
            ``e`` began at ``reset(seed=rollout.seed + e)``, and environments are
            deterministic given that seed, so replaying ``rollout.action[:, e]`` shows the
            very episode that was scored (no model needed, no second policy rollout).
        path: ``.gif`` writes an animated gif (Pillow, looping; Pillow merges consecutive
            identical frames into one longer frame, so a still scene keeps its play time but
            has fewer frames); anything else an H.264 mp4 through imageio's ffmpeg plugin
            (``pip install imageio-ffmpeg``, a zsrl dependency).
        episode: which of the rollout's episodes.
        task: the env's task where the domain draws one (e.g. the maze's target sphere).
        fps: playback frame rate. The environment runs at ``env.metadata["render_fps"]``
            steps per second (50 for the dm_control domains), so real time is
            ``fps = render_fps / frame_stride``.
        size: ``(height, width)`` of the frames; frames rendered at another size are scaled
            to fit inside it, keeping their aspect ratio (mp4 dimensions are rounded up to
            even numbers).
        frame_stride: render every ``frame_stride``-th step. The video holds the frame after
            ``reset`` and after every step ``t`` with ``t % frame_stride == 0`` or the last
            step, i.e. ``1 + ceil(T / frame_stride)`` frames for an episode of ``T`` steps.

    Raises:
        RuntimeError: rendering is unavailable (the message says how to enable it), or the
            replay left the recorded episode (an environment that is not deterministic).
    """
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, not {frame_stride}")
    path = Path(path)
    gif = path.suffix.lower() == ".gif"
    seed = rollout.seed + episode
    actions = rollout.action[: rollout.episode_length(episode), episode]
    try:
        env = domain.make_render_env(seed=seed, task=task, size=size)
    except (ImportError, OSError) as exc:  # a GL library that cannot be loaded
        raise _render_error(f"{type(exc).__name__}: {exc}") from exc

    with tempfile.TemporaryDirectory(prefix="zsrl-video-") as tmp:
        tmp_path = Path(tmp) / ("video.gif" if gif else "video.mp4")
        frames: list[np.ndarray] = []
        writer = None
        try:
            obs, _ = env.reset(seed=seed)
            _check_replay(obs, rollout.observation[0, episode], 0)
            first = _frame(env, size, even=not gif)  # fail early, before opening a writer
            if gif:
                frames.append(first)
            else:
                writer = _mp4_writer(tmp_path, fps)
                writer.append_data(first)
            for t, action in enumerate(actions, start=1):
                obs, *_ = env.step(action)
                if t < len(actions):
                    _check_replay(obs, rollout.observation[t, episode], t)
                if t % frame_stride == 0 or t == len(actions):
                    frame = _frame(env, size, even=not gif)
                    if gif:
                        frames.append(frame)
                    else:
                        writer.append_data(frame)
        finally:
            if writer is not None:
                writer.close()
            env.close()
        if gif:
            import imageio.v3 as iio

            iio.imwrite(tmp_path, np.stack(frames), plugin="pillow",
                        duration=1000.0 / fps, loop=0)
        atomic_write_bytes(path, tmp_path.read_bytes())
    return path


def _check_replay(obs: np.ndarray, recorded: np.ndarray, step: int) -> None:
    if not np.allclose(obs, recorded, rtol=1e-4, atol=1e-4):
        raise RuntimeError(
            f"the replayed episode left the evaluated one at step {step}: the environment is "
            "not deterministic given its seed, so a video of it would show another episode"
        )


def _mp4_writer(path: Path, fps: int) -> Any:
    import imageio.v2 as imageio

    try:
        return imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                  pixelformat="yuv420p", macro_block_size=2, quality=7)
    except (ImportError, RuntimeError, ValueError) as exc:
        raise RuntimeError(
            f"cannot write mp4 ({exc}); install imageio-ffmpeg (pip install imageio-ffmpeg) "
            "or write a .gif instead"
        ) from exc


# ---- 5. benchmark bars ------------------------------------------------------------------
def benchmark_bars(
    table: Mapping[str, Mapping[str, Mapping[str, float | None]]], path: str | Path
) -> Path:
    """A benchmark table as grouped bars: one panel per domain, tasks × agents.

    Args:
        table: ``{domain: {agent: {task: mean_return}}}``. A value that is None or NaN (an
            agent not run on a task) leaves a gap. Agents keep one colour across panels.
        path: output image.
    """
    if not table:
        raise ValueError("the benchmark table is empty")
    agents: list[str] = []
    for per_agent in table.values():
        agents += [a for a in per_agent if a not in agents]
    colors = dict(zip(agents, _colors(len(agents))))

    widths = []
    for per_agent in table.values():
        n_tasks = len({t for scores in per_agent.values() for t in scores})
        widths.append(max(3.6, 1.0 + 0.4 * n_tasks * max(1, len(per_agent))))
    nrows, ncols = _grid(len(table), 3)
    fig, axes = _figure(nrows, ncols, (max(widths), 3.8))
    for ax, (domain, per_agent) in zip(axes.flat, table.items()):
        tasks: list[str] = []
        for scores in per_agent.values():
            tasks += [t for t in scores if t not in tasks]
        series = [(agent, [_num(scores.get(t)) for t in tasks], colors[agent], {})
                  for agent, scores in per_agent.items()]
        _grouped_bars(ax, tasks, series)
        ax.set_title(domain, fontsize=10)
        ax.set_xlabel("task", fontsize=8)
        ax.set_ylabel("mean " + _RETURN_LABEL, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    _hide_unused(axes, len(table))
    handles = [_bar_handle(colors[a], a) for a in agents]
    fig.legend(handles=handles, loc="outside upper right", fontsize=8, frameon=False,
               ncols=min(len(agents), 6))
    fig.suptitle("Zero-shot benchmark: mean return per task", fontsize=11)
    return _save(fig, path)


def _bar_handle(color: Any, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(facecolor=color, label=label)
