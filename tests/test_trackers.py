"""Experiment trackers: TensorBoard read back from its event file, W&B in its offline mode."""

from __future__ import annotations

import json
import struct
import sys

import pytest
from conftest import save_maze_dataset

from zsrl.cli import main
from zsrl.errors import UserError
from zsrl.training import start_run

TINY = ["agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
        "train.batch_size=32", "train.steps=20", "train.log_every=10", "train.progress=false", "train.compile=false"]


def _train(tmp_path, logger):
    data = save_maze_dataset(tmp_path / "ds")
    run = start_run("fb/point_mass_maze_cpu", data, tmp_path / "run", [*TINY, f"train.loggers=[{logger}]"])
    assert main(["eval", str(run), "--tasks", "reach_top_left", "--goals", "reach_top_left", "--episodes", "1"]) == 0
    return run


def test_tensorboard_gets_the_metric_rows_and_the_evaluation(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _train(tmp_path, "tensorboard")
    events = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    fb = rows[0].index("loss/fb")
    logged = events.Scalars("loss/fb")
    assert [e.step for e in logged] == [int(r[0]) for r in rows[1:]] == [10, 20]
    assert [e.value for e in logged] == pytest.approx([float(r[fb]) for r in rows[1:]], rel=1e-6)
    assert "evaluation/text_summary" in events.Tags()["tensors"]


def _wandb_history(run_dir):
    """The history records of a run's offline W&B sessions (each a .wandb file: a
    LevelDB-style log of protobuf records), in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        records += _log_records(path.read_bytes())
    history = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return history


def _log_records(data: bytes) -> list[bytes]:
    """The records of a LevelDB-style log: 32 KiB blocks, records of a 7-byte header (crc,
    length, kind: 1 full, 2 first, 3 middle, 4 last) after the file's 7-byte header."""
    pos, records, part = 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            records.append(part)
    return records


def test_wandb_offline_gets_the_metric_rows_and_the_evaluation_tables(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = _train(tmp_path, "wandb")
    history = _wandb_history(run)
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    fb = rows[0].index("loss/fb")
    logged = [h for h in history if "loss/fb" in h]
    assert [h["_step"] for h in logged] == [int(r[0]) for r in rows[1:]] == [10, 20]
    assert [h["loss/fb"] for h in logged] == pytest.approx([float(r[fb]) for r in rows[1:]], rel=1e-6)
    assert any(h.get("eval/tasks/_type") == "table-file" for h in history)
    assert any(h.get("eval/goals/nrows") == 1 for h in history)


def test_a_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    data = save_maze_dataset(tmp_path / "ds")
    with pytest.raises(UserError, match=r'needs its package: pip install "zsrl\[wandb\]"'):
        start_run("fb/point_mass_maze_cpu", data, tmp_path / "run", [*TINY, "train.loggers=[wandb]"])
    assert not (tmp_path / "run").exists()
