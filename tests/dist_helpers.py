"""Spawned gloo process groups for the distributed tests (no ports: a ``file://`` store).

``run_distributed(fn, world_size, tmp_path, *args)`` starts ``world_size`` processes with
``torch.multiprocessing.spawn``; each sets one thread (two ranks with two threads each on
two cores run ~90x slower), joins a gloo group through a file in ``tmp_path`` with a 60 s
timeout on collectives, calls ``fn(rank, world_size, *args)`` and leaves the group. An
exception in a rank fails the call (spawn terminates the others); a job that has not ended
after ``timeout`` seconds is killed and fails. ``fn`` must be importable (module level) and
report through files.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 60


def _worker(rank: int, fn, world_size: int, store: str, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, tmp_path: Path, *args, timeout: float = 180) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned gloo ranks."""
    store = Path(tmp_path) / f"store_{time.monotonic_ns()}"
    context = mp.spawn(_worker, args=(fn, world_size, str(store), args), nprocs=world_size,
                       join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"distributed job {fn.__name__} did not finish in {timeout} s")


def raised_errors(calls: dict) -> dict:
    """Run each ``name: call``; return ``name: str(ValueError)``, or None where none was raised.

    For the bad-launch checks inside a rank: every rank must raise the error itself.
    """
    errors = {}
    for name, call in calls.items():
        try:
            call()
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)
    return errors
