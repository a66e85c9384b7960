r"""Data-parallel training over ``torch.distributed``: ``N`` processes (*ranks*), launched by
``torchrun``, each holding a replica of the agent and the dataset.

**The global batch.** ``train.batch_size = B`` is the batch of one update across all ranks;
rank ``r`` samples ``b = B / N`` rows from its own random stream. A loss that is a mean over
rows is the mean over ranks of the ranks' means. A loss that contrasts rows with each other
— FB's measure loss ``½ mean_{i≠j} Δ_ij² − mean_i Δ_ii`` over the ``B × B`` matrix
``Δ_ij = F(s_i, a_i, z_i)ᵀB(s'_j) − γ M̄_ij``, the orthonormality term's ``B_iᵀB_j`` —
needs every column: rank ``r`` computes its ``b`` rows against all ``B`` columns, the
columns :func:`gather_rows` collected (with their gradient), its diagonal starting at
column :func:`row_offset` ``= r b``, and normalises by the global counts
(``b (B − 1)`` off-diagonal pairs, ``b`` diagonal terms). The mean over ranks of these
partial losses is the loss of one process on the whole batch.

**Gradients.** The backward pass of :func:`gather_rows` sums, for each rank's rows, the
gradients every rank's loss sent to them (a reduce-scatter). So the gradient rank ``k``
computes is ``∂L_k/∂θ`` along its own rows plus ``Σ_r ∂L_r/∂B_k`` through its columns, and
the mean over ranks of these (:func:`average_gradients`, one all-reduce per optimiser step)
is ``∂/∂θ (1/N) Σ_r L_r``: the gradient of the one-process loss. Every rank then takes the
same optimiser step on the same averaged gradient, so the replicas stay identical
(:func:`check_replicas`). Quantities that scale a loss by a batch statistic (TD3+BC's
``1 / mean |Q|``) or update a buffer from one (HILP's feature mean and whitening) use
:func:`global_mean` / :func:`global_sum`.

In a single process (no process group) every function here is the identity, and costs
nothing. Collectives go through ``torch.distributed._functional_collectives``, which
``torch.compile`` traces; NCCL for CUDA tensors, gloo for CPU tensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc

from zsrl.errors import UserError

T = TypeVar("T")

#: how long a rank waits in a collective for the others (a periodic evaluation on rank 0
#: keeps the others waiting at their next update)
TIMEOUT = timedelta(minutes=30)


# ---- the world ---------------------------------------------------------------------------
def active() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0: the process that writes the run's files."""
    return rank() == 0


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``; 1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init() -> None:
    """Join the process group ``torchrun`` describes in the environment (once; a no-op in a
    single process). Collectives on CPU tensors go through gloo, on CUDA tensors through
    NCCL (where CUDA is available), so the group serves CPU and GPU training alike; each
    rank takes the GPU of its ``LOCAL_RANK``."""
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run one process, or install a torch with it")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` → this rank's GPU (``cuda:LOCAL_RANK``) when several ranks share a machine."""
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def rank_seed(seed: int) -> int:
    """The seed of rank ``r``'s sampling stream: ``seed`` itself on rank 0 (a one-process run
    is unchanged), a distinct stream on every other rank."""
    r = rank()
    return seed if r == 0 else (seed * 1_000_003 + r * 7_919) % 2**63


# ---- differentiable and reducing collectives (identity in one process) --------------------
def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``x`` (equal shapes), concatenated in rank order; the gradient of
    each rank's rows comes back to that rank, summed over the ranks' losses."""
    if not active():
        return x
    return fc.wait_tensor(fc.all_gather_single(x.contiguous(), 0, dist.group.WORLD))


def row_offset(rows: int) -> int:
    """Where this rank's ``rows`` rows begin in :func:`gather_rows`'s result."""
    return rank() * rows


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """``Σ_ranks x`` (no gradient)."""
    if not active():
        return x.detach()
    return fc.wait_tensor(fc.all_reduce(x.detach(), "sum", dist.group.WORLD))


def global_min(x: torch.Tensor) -> torch.Tensor:
    """The elementwise least ``x`` over ranks (no gradient)."""
    if not active():
        return x.detach()
    return fc.wait_tensor(fc.all_reduce(x.detach(), "min", dist.group.WORLD))


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (no gradient): with equal shares of the batch, the batch
    mean of a per-rank batch mean."""
    return x.detach() if not active() else global_sum(x) / world_size()


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace each gradient by its mean over ranks, in one all-reduce. A parameter without
    a gradient (``None``: unused by the loss, alike on every rank) keeps none."""
    if not active():
        return
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = fc.wait_tensor(fc.all_reduce(flat, "sum", dist.group.WORLD)) / world_size()
    for p, part in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = part.view_as(p)


# ---- host-side agreement (at the training loop's sync points) ------------------------------
def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true when it is true on any rank (one small all-reduce)."""
    if not active():
        return tuple(flags)
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)  # on the CPU: through gloo
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (picklable; tensors are moved to the CPU) on rank 0, ``None``
    elsewhere; ``[obj]`` in one process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size() if is_main() else []
    dist.gather_object(_to_cpu(obj), out if is_main() else None, dst=0)
    return out if is_main() else None


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank is gone (dead,
    killed or stuck past :data:`TIMEOUT`)."""
    if not active() or not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        marker in text for marker in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out", "Timed out")
    )


class PeerError(UserError):
    """Raised on ranks ``> 0`` for an error rank 0 met and reported (so it prints once)."""


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only (checks and writes of the run's files); an error it raises
    there is raised on every rank (as :class:`PeerError` elsewhere), so all ranks stop
    together instead of waiting for rank 0 in their next collective."""
    if not active():
        return fn()
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others heard of it
            error = exc
    message = [None if error is None else (type(error).__name__, str(error), getattr(error, "exit_code", 2))]
    dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        name, text, code = message[0]
        exc = PeerError(f"rank 0 stopped the run ({name}): {text}")
        exc.exit_code = code  # type: ignore[attr-defined]
        raise exc
    return result


def check_replicas(modules: dict[str, torch.nn.Module], step: int) -> None:
    """Raise where the ranks' parameters and buffers differ (they must stay identical: every
    rank takes the same step on the same averaged gradient). Two all-reduces of two
    float64 checksums per tensor (its sum and sum of squares)."""
    if not active():
        return
    names, sums = [], []
    for prefix, module in modules.items():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point():
                names.append(f"{prefix}.{name}")
                t64 = t.detach().double()
                sums.append(torch.stack([t64.sum(), t64.square().sum()]))
    if not sums:
        return
    mine = torch.stack(sums).cpu()  # through gloo
    high, low = mine.clone(), mine.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    differs = ((high != low) & ~(high.isnan() & low.isnan())).any(1).tolist()
    bad = [n for n, d in zip(names, differs, strict=True) if d]
    if bad:
        raise RuntimeError(
            f"the ranks' replicas differ at step {step} ({', '.join(bad[:4])}{' …' if len(bad) > 4 else ''}): "
            "an update changed state from this rank's batch alone. This is a bug in the agent (a buffer "
            "updated from a batch statistic must use zsrl.distributed.global_mean); please report it."
        )

