"""Render an :class:`~zsrl.evaluation.Evaluation`: results.json, report.md, a table, pictures.

Nothing here evaluates: :func:`zsrl.evaluation.evaluate_run` produces the numbers, this module
writes them. An evaluation folder (``zsrl eval --out``, default ``RUN_DIR/eval``) holds::

    results.json      strict JSON: what was scored, per-task / per-goal numbers, notes, files
    report.md         the same as tables, with the pictures
    returns.png, learning_curves.png, trajectories.png, video_*.mp4

Earlier results are never replaced silently: :func:`refuse_to_replace` (called before the
evaluation runs) stops unless ``overwrite`` is given, and an overwrite removes the pictures
of the earlier report that the new one does not redraw (only files that report listed).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from zsrl.envs import make_domain
from zsrl.errors import UserError
from zsrl.evaluation import MIN_ORACLE_RETURN, Evaluation
from zsrl.storage import atomic_write_bytes, is_dataset_dir, is_run_dir, writer_lock

RESULTS = "results.json"
REPORT = "report.md"


# ---- never replace silently, never write into someone else's folder --------------------------
def refuse_to_replace(out: str | Path, json_path: str | Path | None = None, overwrite: bool = False) -> None:
    """A UserError unless an evaluation may be written to ``out`` (and ``json_path``).

    ``out`` may not be a dataset, a model or checkpoint folder, or a run's own folder (its
    ``eval/`` is where evaluations go); ``json_path`` may not be a folder, and may replace only
    a results file that ``zsrl eval`` wrote. Earlier results are replaced only with
    ``overwrite``. Call it under ``out``'s writer lock (:func:`locked_report`).
    """
    out = Path(out)
    what = _artifact(out)
    if what:
        raise UserError(f"--out {out} is {what}; an evaluation written there would mix with it. "
                        f"Choose another --out (the default is RUN/eval).")
    if json_path is not None:
        json_path = Path(json_path)
        if json_path.is_dir():
            raise UserError(f"--json {json_path} is a folder; give the path of a file to write")
        if json_path.exists() and _earlier_results(json_path) is None:
            raise UserError(f"--json {json_path} exists and is not a result that zsrl eval wrote; it would be "
                            "destroyed, even with --overwrite. Choose another path.")
    if overwrite:
        return
    taken = [p for p in (out / RESULTS, json_path) if p and p.exists()]
    if taken:
        earlier = _earlier_results(out / RESULTS)
        what = f" (an evaluation of {earlier})" if earlier else ""
        raise UserError(
            f"{', '.join(map(str, taken))} already exists{what}; zsrl eval does not replace earlier "
            "results silently. Pass --out DIR to write elsewhere, or --overwrite to replace them."
        )


def _artifact(path: Path) -> str | None:
    """What zsrl artifact the folder ``path`` is, if any."""
    if is_dataset_dir(path):
        return "a dataset"
    if is_run_dir(path):
        return "a run's own folder"
    if (path / "model.safetensors").is_file() or (path / "manifest.json").is_file():
        return "a model or checkpoint folder"
    return None


@contextlib.contextmanager
def locked_report(out: str | Path, json_path: str | Path | None = None) -> Iterator[None]:
    """Hold the writer locks of ``out`` (and ``json_path``) while an evaluation is checked,
    computed and written: two evaluations into one folder never both write it."""
    with writer_lock(out, "evaluation"), (writer_lock(json_path, "--json file") if json_path
                                           else contextlib.nullcontext()):
        yield


def _earlier_results(path: Path) -> str | None:
    try:
        earlier = json.loads(path.read_text())
        scored = earlier["scored"]
        return f"the {scored['source']} at step {scored['step']:,}, {earlier['created']}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _remove_stale_files(out: Path, keep: Iterable[str]) -> None:
    """Delete the files an earlier report in ``out`` listed and this one does not rewrite."""
    try:
        listed = json.loads((out / RESULTS).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return
    for name in set(listed) - set(keep):
        if isinstance(name, str) and Path(name).name == name:  # only plain names inside out/
            (out / name).unlink(missing_ok=True)


# ---- strict JSON ------------------------------------------------------------------------
def finite_or_null(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """``obj`` with every NaN / inf float replaced by None, and the paths of those floats."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where or "(top level)"]
    if isinstance(obj, dict):
        items = [(k, *finite_or_null(v, f"{where}.{k}" if where else str(k))) for k, v in obj.items()]
        return {k: v for k, v, _ in items}, [p for *_, ps in items for p in ps]
    if isinstance(obj, (list, tuple)):
        items = [finite_or_null(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in items], [p for _, ps in items for p in ps]
    return obj, []


def results_json(evaluation: Evaluation, files: Iterable[str] = ()) -> bytes:
    """The evaluation as strict JSON (no bare NaN: non-finite numbers become null plus a note)."""
    data, replaced = finite_or_null({**evaluation.to_dict(), "files": sorted(files)})
    if replaced:
        shown = ", ".join(replaced[:5]) + (f" and {len(replaced) - 5} more" if len(replaced) > 5 else "")
        data["notes"].append(f"non-finite numbers (NaN or inf) were written as null: {shown}")
    return (json.dumps(data, indent=2, allow_nan=False, default=str) + "\n").encode()


def write_results_json(evaluation: Evaluation, path: str | Path, files: Iterable[str] = ()) -> Path:
    atomic_write_bytes(path, results_json(evaluation, files))
    return Path(path)


# ---- the report -------------------------------------------------------------------------
def write_report(evaluation: Evaluation, out: str | Path, video: bool = False, overwrite: bool = False) -> list[Path]:
    """results.json, report.md and pictures (bars, learning curves, maze paths, videos) in ``out``."""
    out = Path(out)
    with locked_report(out):
        refuse_to_replace(out, overwrite=overwrite)
        return _write_report(evaluation, out, video)


def _write_report(evaluation: Evaluation, out: Path, video: bool) -> list[Path]:
    from zsrl import plots

    domain = make_domain(evaluation.domain_spec)
    run_dir = Path(evaluation.run_dir)
    pictures: list[Path] = []
    if evaluation.tasks:
        oracle = {t: r.oracle_return for t, r in evaluation.tasks.items() if r.oracle_return is not None}
        pictures.append(plots.task_bars(evaluation.to_dict(), out / "returns.png", oracle=oracle or None))
    if (run_dir / "metrics.csv").is_file():
        try:
            pictures.append(plots.learning_curves(run_dir, out / "learning_curves.png"))
        except ValueError as exc:  # a metrics.csv without rows, or not zsrl's
            evaluation.notes.append(f"no learning curves: {exc}")
    if evaluation.rollouts and domain.has_layout:
        pictures.append(plots.maze_trajectories(domain, evaluation.rollouts, out / "trajectories.png"))
    if video:
        pictures += _videos(evaluation, domain, out)
    files = [p.name for p in pictures] + [RESULTS, REPORT]
    _remove_stale_files(out, files)
    write_results_json(evaluation, out / RESULTS, files)
    markdown = render_markdown(evaluation, pictures)
    atomic_write_bytes(out / REPORT, markdown.encode())
    _send_to_trackers(evaluation, markdown, [p for p in pictures if p.suffix == ".mp4"])
    return pictures


def _send_to_trackers(evaluation: Evaluation, markdown: str, videos: list[Path]) -> None:
    """The result tables and videos to the trackers the run logs to (``train.loggers``)."""
    from zsrl.trackers import open_trackers

    names = evaluation.config.get("train", {}).get("loggers") or []
    if not names:
        return
    tasks = [["task", "mean return", "episodes"], *([t, r.mean_return, len(r.returns)] for t, r in evaluation.tasks.items())]
    goals = [["goal", "success", "final distance"],
             *([g, r.success, r.final_distance] for g, r in evaluation.goals.items())]
    for tracker in open_trackers(names, Path(evaluation.run_dir), evaluation.config):
        try:
            tracker.log_report(markdown, {"tasks": tasks, "goals": goals}, videos, evaluation.scored.step)
        finally:
            tracker.close()


def _videos(evaluation: Evaluation, domain: Any, out: Path) -> list[Path]:
    """One video per prompt of the first seed, replayed from its evaluation rollout."""
    from zsrl import plots

    videos = []
    for key, rollout in evaluation.rollouts.items():
        kind, name = key.split(":", 1)
        stem = f"video_{_slug(name)}" if kind == "task" else f"video_goal_{_slug(name)}"
        try:
            videos.append(plots.policy_video(domain, rollout, out / f"{stem}.mp4",
                                             task=name if name in domain.tasks else None))
        except RuntimeError as exc:
            evaluation.notes.append(f"no video: {exc}")
            print(f"no video: {exc}", file=sys.stderr)
            break
    return videos


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def render_markdown(evaluation: Evaluation, pictures: list[Path]) -> str:
    e = evaluation
    setup = (f"Run `{e.run_dir}`: scored {e.scored}; {e.episodes} episodes × seeds {e.seeds}; "
             f"dataset `{e.dataset}`.")
    md = [f"# zsrl eval — {e.agent} on {e.domain_spec or e.domain}", "", setup, ""]
    md += [f"> note: {n}" for n in e.notes] + ([""] if e.notes else [])
    md += [format_table(e), ""]
    md += [f"![{p.stem}]({p.name})" if p.suffix == ".png" else f"[{p.name}]({p.name})" for p in pictures]
    return "\n".join(md) + "\n"


def format_table(evaluation: Evaluation) -> str:
    """The task table (with oracle columns when there is an oracle) and the goal table."""
    lines = []
    tasks, goals = evaluation.tasks, evaluation.goals
    if tasks:
        oracle = any(r.oracle_return is not None for r in tasks.values())
        extra_head = " oracle return | % of oracle |" if oracle else ""
        lines += [f"| task | mean return | std | episodes | reward samples |{extra_head}",
                  "|---|---:|---:|---:|---:|" + ("---:|---:|" if oracle else "")]
        for name, r in tasks.items():
            row = (f"| {name} | {r.mean_return:.1f} | {np.std(r.returns):.1f} | {len(r.returns)} | "
                   f"{r.reward_samples} |")
            if oracle:
                ret = "–" if r.oracle_return is None else f"{r.oracle_return:.1f}"
                pct = "–" if r.pct_of_oracle is None else f"{r.pct_of_oracle:.0f}%"
                row += f" {ret} | {pct} |"
            lines.append(row)
        if oracle:
            names = sorted({r.oracle for r in tasks.values() if r.oracle})
            lines.append(f"\noracle: {'; '.join(names)} (% shown only where its return ≥ {MIN_ORACLE_RETURN})")
        agg = evaluation.aggregate
        if agg:
            lines.append(
                f"\nmean {agg['mean']:.1f} [{agg['mean_ci'][0]:.1f}, {agg['mean_ci'][1]:.1f}]  ·  "
                f"IQM {agg['iqm']:.1f} [{agg['iqm_ci'][0]:.1f}, {agg['iqm_ci'][1]:.1f}]  "
                "(95% bootstrap CI over tasks × seeds)"
            )
    reached = {f"{name} (goal prompt)": g for name, g in goals.items()}
    reached |= {f"{name} (reward prompt)": r.goal for name, r in tasks.items() if r.goal is not None}
    if reached:
        reference = any(g.reference_success is not None for g in reached.values())
        lines += ["", "| goal | success |" + (" reference rule |" if reference else "")
                  + " ever reached | final distance | min distance | time within | threshold |",
                  "|---|---:|" + ("---:|" if reference else "") + "---:|---:|---:|---:|---:|"]
        for name, g in reached.items():
            ref = "" if not reference else " – |" if g.reference_success is None else f" {g.reference_success:.0%} |"
            lines.append(f"| {name} | {g.success:.0%} |{ref} {g.reached:.0%} | {g.final_distance:.3f} | "
                         f"{g.min_distance:.3f} | {g.time_within:.0%} | {g.threshold:g} |")
    return "\n".join(lines)
