"""Helpers shared by the scripts that run inside a Python with vLLM (vllm_logprobs.py, vllm_throughput.py);
imported as a sibling module, since those scripts run as files, not as part of the ``tbq_eval`` package."""

from __future__ import annotations

import os
import sys


def memory_share() -> dict:
    """vLLM's gpu_memory_utilization from $TBQ_VLLM_GPU_MEMORY (a fraction), when set: for sharing the GPU."""
    share = os.environ.get("TBQ_VLLM_GPU_MEMORY")
    return {"gpu_memory_utilization": float(share)} if share else {}


def leave() -> None:
    """Exit without interpreter teardown: vLLM's CPU build can abort there ("terminate called without an active
    exception") after the work is done and written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
