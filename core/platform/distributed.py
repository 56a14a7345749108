"""Training on several processes with PyTorch's own engine: ``torchrun`` and DistributedDataParallel.

``torchrun --nproc_per_node N -m core train …`` (or ``-m core.jobs.worker RUN_DIR``) starts N copies;
torchrun tells each its rank in the environment. Rank 0 alone writes the run folder; the
others compute and take part in the collectives. With one process every function here is a
no-op, so the single-process trainer is the same code.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes of this run on this machine: they share its cores

    @property
    def main(self) -> bool:
        """The process that writes records, checkpoints, status.json and summary.json."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


SINGLE = World()


class Terminated(Exception):
    """torchrun stopped this process because another process of the run failed."""


def world_from_env() -> World:
    """The world torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), or a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")),
                 int(os.environ.get("LOCAL_WORLD_SIZE", size)))


def start(world: World) -> None:
    """Join the process group: NCCL with one GPU per local rank, else gloo on the CPU."""
    if not world.active or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", world.local_rank))
    else:
        dist.init_process_group("gloo")

    def terminated(signum, frame):
        raise Terminated("another process of this run failed, so torchrun stopped this one "
                         "(its error is in the torchrun output and in error-rank<N>.txt)")
    signal.signal(signal.SIGTERM, terminated)


def finish(world: World) -> None:
    """Leave the process group together: no rank closes its connections while another still uses them."""
    if world.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(obj, world: World):
    """Rank 0's ``obj``, on every rank."""
    if not world.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_all(obj, world: World) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.active:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def total(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over all ranks (in place)."""
    if world.active:
        dist.all_reduce(tensor)
    return tensor


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def shard(n: int, world: World, *, pad: bool) -> list[int]:
    """This rank's positions of ``range(n)``: every size-th, from its rank. With ``pad``, every rank
    gets the same count (the last position repeated), so all ranks run the same number of batches."""
    mine = list(range(world.rank, n, world.size))
    if pad:
        per_rank = -(-n // world.size)
        mine += [mine[-1] if mine else 0] * (per_rank - len(mine))
    return mine


def device_line(device: torch.device, name: str, world: World) -> str:
    if not world.active:
        return name
    backend = "nccl" if device.type == "cuda" else "gloo"
    return f"{world.size} × {name} ({backend})"
