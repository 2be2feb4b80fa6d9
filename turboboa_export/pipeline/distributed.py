"""Several processes quantizing one model (torch.distributed: NCCL between GPUs, gloo between CPU processes).

Each rank runs its contiguous share of the calibrating sequences and of the held-out ones through the blocks; the
statistics sums (H_in and R of every linear input, the attention statistics, the block-output errors) are
all-reduced, so every rank holds the statistics of all calibrating sequences; a block's linears are then spread
over the ranks (weight-parallel: the largest first, each to the least-loaded rank) and each result is broadcast
from its owner. Rank 0 writes the run. With one process every operation here is the identity, so the run is bit
for bit the single-process one.

The ranks come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``),
as ``torchrun --nproc-per-node N -m tbq_cli.main quantize ...`` or ``tbq quantize --gpus N`` (``launch``) set it.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass

import torch

from ..algorithms.quantized import QuantizedWeight
from ..errors import TbqError
from .statistics import BlockStatistics

CODES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
         torch.float32, torch.float64, torch.bool)  # dtypes a broadcast carries, by index


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` processes, and the collectives the pipeline uses (on ``device``)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def lead(self) -> bool:
        """Whether this rank writes the run and reports progress."""
        return self.rank == 0

    def share(self, n: int, may_be_empty: bool = False) -> slice:
        """This rank's contiguous part of ``n`` items (calibration sequences). Raises TbqError when some rank
        would get none, unless ``may_be_empty`` (held-out windows: a rank may hold none)."""
        if n < self.world and not may_be_empty:
            raise TbqError(f"{n} calibration sequences cannot be split over {self.world} processes; raise "
                           f"--nsamples to at least {self.world} or use fewer GPUs")
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place."""
        if self.world > 1:
            import torch.distributed as dist

            for t in tensors:
                dist.all_reduce(t)

    def sum(self, values: list[float]) -> list[float]:
        """Each number summed over the ranks (float64)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.all_reduce([t])
        return t.tolist()

    def owners(self, costs: dict[str, float]) -> dict[str, int]:
        """Key -> the rank that computes it: the costliest first, each to the least-loaded rank (lowest on ties);
        the same on every rank."""
        load = [0.0] * self.world
        out = {}
        for key in sorted(costs, key=lambda k: -costs[k]):
            r = min(range(self.world), key=lambda i: load[i])
            out[key] = r
            load[r] += costs[key]
        return out

    def broadcast(self, tensors: list[torch.Tensor] | None, src: int) -> list[torch.Tensor]:
        """Rank ``src``'s ``tensors`` (any dtypes and shapes; None elsewhere) on every rank, on ``device``."""
        if self.world == 1:
            return tensors
        import torch.distributed as dist

        if self.rank == src:
            parts = [t.detach().to(self.device).contiguous() for t in tensors]
            header = torch.tensor([len(parts)] + [v for t in parts for v in (CODES.index(t.dtype), t.dim(), *t.shape)],
                                  dtype=torch.int64, device=self.device)
            size = torch.tensor([header.numel()], dtype=torch.int64, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.broadcast(size, src)
        if self.rank != src:
            header = torch.zeros(int(size), dtype=torch.int64, device=self.device)
        dist.broadcast(header, src)
        fields, i, specs = header.tolist(), 1, []
        for _ in range(fields[0]):
            dtype, ndim = CODES[fields[i]], fields[i + 1]
            specs.append((dtype, tuple(fields[i + 2: i + 2 + ndim])))
            i += 2 + ndim
        nbytes = [torch.Size(shape).numel() * dtype.itemsize for dtype, shape in specs]
        if self.rank == src:
            flat = torch.cat([t.reshape(-1).view(torch.uint8) for t in parts]) if parts else None
        else:
            flat = torch.empty(sum(nbytes), dtype=torch.uint8, device=self.device)
        if sum(nbytes):
            dist.broadcast(flat, src)
        out, at = [], 0
        for (dtype, shape), n in zip(specs, nbytes):
            out.append(flat[at: at + n].clone().view(dtype).reshape(shape))  # the copy starts aligned
            at += n
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def join(device: torch.device) -> tuple[Ranks, torch.device]:
    """This process's :class:`Ranks` and device: one process without torchrun's environment; else the process
    group is joined (once; NCCL on CUDA, gloo on CPU), CUDA devices become ``cuda:LOCAL_RANK``, and ranks other
    than 0 log errors only."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise TbqError(f"{world} processes need {world} GPUs, and this machine has {torch.cuda.device_count()}; "
                           "lower --gpus")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    if rank:
        logging.getLogger("tbq").setLevel(logging.ERROR)
    return Ranks(rank, world, device), device


def reduce_statistics(stats: BlockStatistics, ranks: Ranks) -> None:
    """Sum a block's statistics (every second moment's and the attention statistics' sums, and their token
    counts) over the ranks, in place: each rank then holds the statistics of all calibration sequences."""
    for part in [*stats.moments.values(), *([stats.attention] if stats.attention is not None else [])]:
        ranks.all_reduce(part.sums())
        part.tokens = int(ranks.sum([part.tokens])[0])


def shared_linear(ranks: Ranks, mine: tuple[QuantizedWeight, list[float]] | str | None,
                  owner: int) -> tuple[QuantizedWeight, list[float]]:
    """The owner's (quantized weight, numbers) on every rank; ``mine``: this rank's result when it is the owner
    (a str: the owner's TbqError message, raised on every rank), else None."""
    if ranks.world > 1:
        if ranks.rank == owner:
            error = (mine if isinstance(mine, str) else "").encode()
            q, numbers = (QuantizedWeight(*[torch.empty(0)] * 4), [0.0]) if isinstance(mine, str) else mine
            payload = [q.codes, q.scale, q.zero, q.g_idx, torch.tensor(numbers, dtype=torch.float64),
                       torch.tensor(list(error), dtype=torch.uint8)]
        else:
            payload = None
        codes, scale, zero, g_idx, numbers, error = ranks.broadcast(payload, owner)
        mine = bytes(error.tolist()).decode() or (QuantizedWeight(codes, scale, zero, g_idx), numbers.tolist())
    if isinstance(mine, str):
        raise TbqError(mine)
    return mine
