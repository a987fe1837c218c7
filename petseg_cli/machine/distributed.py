"""Training in several processes started by torchrun: DistributedDataParallel, NCCL on GPUs, gloo on CPUs.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE in each process; without them petseg
trains in one process and everything here is a no-op. ``--batch-size`` stays the global batch: each of
the N processes takes batch/N images of every step, so a run's results do not depend on N (up to
BatchNorm, whose statistics are per process) and ``--resume`` may use another N.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..base.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Context":
        env = os.environ if environ is None else environ
        world_size = int(env.get("WORLD_SIZE", "1"))
        return cls(
            rank=int(env.get("RANK", "0")),
            world_size=world_size,
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world_size))),
        )

    def per_rank_batch(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise UsageError(
                f"--batch-size {batch_size} is the global batch and must divide evenly among "
                f"{self.world_size} processes"
            )
        return batch_size // self.world_size

    # -- setup and teardown -----------------------------------------------------------------------
    def device(self, requested: "torch.device") -> "torch.device":
        """On a GPU, each process on a machine takes the GPU of its local rank."""
        import torch

        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def start(self, device: "torch.device") -> None:
        if not self.enabled:
            return
        import torch
        import torch.distributed as dist

        from torch.distributed.constants import default_pg_timeout

        from .rendezvous import fresh_store, shares_agent_store

        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not shares_agent_store():
            dist.init_process_group(backend)
            return
        # Not torchrun's store as it is: a restart would find the dead processes' addresses in it (rendezvous.py).
        store = fresh_store(self.rank, self.world_size, default_pg_timeout)
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size)

    def stop(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def wrap(self, model: "nn.Module", device: "torch.device") -> "nn.Module":
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # -- agreeing across processes ----------------------------------------------------------------
    def sum(self, values: list[float], device: "torch.device") -> list[float]:
        """Each value summed over the processes (one collective for the list)."""
        if not self.enabled:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast_object(self, value: Any) -> Any:
        """The first process's ``value`` (picklable), in every process."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, model: "nn.Module") -> None:
        """Rank 0's BatchNorm running statistics to every process, so they all validate one model."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
