"""``tbq quantize --gpus N``: the same command run as N ranks of one torch.distributed job on this machine (what
``torchrun --standalone --nproc-per-node N -m tbq_cli.main quantize ...`` does, with tbq's one-line errors).

Rank 0 prints as a single process would; the others' output is kept and shown only when one of them fails and
rank 0 does not (its one-line error, or its traceback). When a rank fails, the others get a few seconds to end on
their own (a TbqError all ranks share ends them all), then are stopped; the exit status is rank 0's failure's,
else the first failing rank's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

POLL_SECONDS = 0.2
GRACE_SECONDS = 5.0


def free_port() -> int:
    """A TCP port free on this machine now (for the ranks' rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_environment(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun sets for one rank, with CPU threads split between the ranks unless OMP_NUM_THREADS is set."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // world))
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": threads}


def launch(args: list[str], world: int) -> int:
    """Run ``python -m tbq_cli.main ARGS`` as ``world`` ranks and return the exit status (0 when all succeed)."""
    port = free_port()
    logs = [None] + [tempfile.TemporaryFile() for _ in range(world - 1)]
    procs = [subprocess.Popen([sys.executable, "-m", "tbq_cli.main", *args], env=rank_environment(r, world, port),
                              stdout=logs[r], stderr=subprocess.STDOUT if r else None) for r in range(world)]
    try:
        while not any(p.poll() for p in procs) and any(p.poll() is None for p in procs):
            time.sleep(POLL_SECONDS)
        culprit = next((r for r, p in enumerate(procs) if p.poll()), None)  # the first to fail, before we stop any
        deadline = time.time() + GRACE_SECONDS  # a failure all ranks share ends them all: let rank 0 say it
        while culprit is not None and any(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(POLL_SECONDS)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    if culprit is None:
        return 0
    failed = [r for r, p in enumerate(procs) if p.returncode > 0]  # not ended by a signal
    first = 0 if 0 in failed else (failed[0] if failed else culprit)
    if first:  # rank 0 printed its own output; another failing rank's is shown here
        logs[first].seek(0)
        sys.stderr.write(logs[first].read().decode(errors="replace"))
    for log in logs[1:]:
        log.close()
    code = procs[first].returncode
    if code < 0:
        sys.stderr.write(f"error: rank {first} of {world} was ended by signal {-code} (out of memory?)\n")
    return code if code > 0 else 1
