"""Helpers of the fault-injection suite: a fork server and file-tree snapshots.

The :class:`ForkServer` imports zsrl once in a subprocess and forks one child per command
(``zsrl.cli.main(argv)`` with extra environment variables such as ``ZSRL_FAULT_POINT``), so
that children start in milliseconds and can be killed for real (SIGKILL) without paying
torch's import each time. The server itself never computes, so forking it is safe, and every
child runs single-threaded: runs compared for bit-exactness all come from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

_SERVER = r"""
import json, os, sys, time
os.environ["OMP_NUM_THREADS"] = "1"
import torch
torch.set_num_threads(1)
import zsrl.cli, zsrl.training, zsrl.collection, zsrl.evaluation, zsrl.storage, zsrl.agents.fb
from zsrl.envs import make_domain
make_domain("point_mass_maze").make_env(seed=0).close()
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(job["cwd"])
        os.environ.update(job["env"])
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if job.get("hold_lock"):
            with zsrl.storage.writer_lock(job["hold_lock"], "run"):
                print("held", flush=True)
                time.sleep(300)
            os._exit(0)
        rc = zsrl.cli.main(job["argv"])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ForkServer:
    """Run zsrl commands in forked children of one pre-imported process."""

    def __init__(self, root: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("ZSRL_FAULT_POINT", None)
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        assert self.proc.stdout.readline().strip() == "ready"
        self.log: Path | None = None
        self.jobs = 0

    def start(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None,
              hold_lock: str | None = None) -> int:
        """Start a child; returns its pid (call :meth:`wait` before the next start)."""
        self.jobs += 1
        self.log = Path(cwd) / f".job{self.jobs}.log"
        job = {"argv": argv, "cwd": str(cwd), "env": env or {}, "log": str(self.log), "hold_lock": hold_lock}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self) -> tuple[int, str]:
        """``(exit code, negative for a signal; the child's output)``."""
        code = json.loads(self.proc.stdout.readline())["code"]
        out = self.log.read_text() if self.log else ""
        if self.log:
            self.log.unlink()
        return code, out

    def run(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
        self.start(argv, cwd, env)
        return self.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait(timeout=30)


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` outside the ``skip`` folders."""
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and not any(s == f or s in f.parents for s in skip) and not f.name.startswith(".job"):
            out[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def metric_rows(run: Path) -> list[list[str]]:
    """metrics.csv rows without the wall-clock columns (time, updates_per_s)."""
    lines = (run / "metrics.csv").read_text().splitlines()
    return [[c for i, c in enumerate(line.split(",")) if i not in (1, 2)] for line in lines]
