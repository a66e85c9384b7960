"""One ``torchrun`` rank of the data-parallel equivalence test (tests/test_distributed.py):
``torchrun --standalone --nproc-per-node N tests/dp_worker.py OUT CASE …`` runs each case's
update on this rank's share of the global batch; rank 0 saves the metrics (means over the
ranks), first moments and state to ``OUT/CASE.pt``, after checking every rank holds the same
state."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dp_cases
import torch

from zsrl import distributed

torch.set_num_threads(1)
distributed.init()
rank, world = distributed.rank(), distributed.world_size()
for case in sys.argv[2:]:
    agent, batch = dp_cases.build(case)
    rows = batch.shape[0] // world
    out = dp_cases.one_update(agent, batch[rank * rows : (rank + 1) * rows])
    distributed.check_replicas(agent.modules(), 1)
    names = list(out["metrics"])
    means = distributed.global_mean(torch.tensor([out["metrics"][k] for k in names], dtype=torch.float64))
    out["metrics"] = dict(zip(names, means.tolist()))
    if rank == 0:
        torch.save(out, Path(sys.argv[1]) / f"{case}.pt")
distributed.shutdown()
