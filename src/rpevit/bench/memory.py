"""Peak CPU memory of one workload step, measured in a fresh worker subprocess.

Definition: the increase of the process's resident set size (RSS) during one step over the
RSS just before it, with the model, inputs and optimizer state already resident, after a
warm-up step of the same workload at the smallest size (so one-time library initialisation
is excluded without paying for a second full step). Method: the worker runs
with a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``), so every tensor buffer above
64 KiB is its own mapping, returned to the OS when freed; before the step it collects
garbage, calls ``malloc_trim(0)`` and resets the kernel's peak-RSS counter (writing ``5`` to
``/proc/self/clear_refs``); after it reads ``VmHWM``. This counts everything the step
touches (tensors, autograd buffers, oneDNN/FFT workspaces), unlike allocator statistics. Where
the counter cannot be reset, each spec runs in its own subprocess without warm-up (then
one-time initialisation is included; the result says so).

Run as ``python -m rpevit.bench.memory`` with a JSON list of specs on stdin (see
:mod:`rpevit.bench.workloads`); prints one JSON list of results.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from typing import Any

#: Environment of the worker: buffers above this many bytes are mmapped individually.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _tiny(spec: dict[str, Any]) -> dict[str, Any]:
    """The same workload at the smallest size: warms up libraries without the cost of a step."""
    if spec["kind"] == "layer":
        return {**spec, "tokens": 16, "batch": 1}
    return {**spec, "image_size": 4 * spec["patch_size"], "batch": 1}


def _measure(spec: dict[str, Any], warm: bool) -> dict[str, Any]:
    from rpevit.bench.workloads import build_step

    if warm:
        build_step(_tiny(spec))()
    step = build_step(spec)
    _release_free_memory()
    reset = _reset_peak()
    before = _status_kib("VmRSS:")
    step()
    peak = _status_kib("VmHWM:")
    return {
        "peak_mib": (peak - before) / 1024,
        "rss_before_mib": before / 1024,
        "warm": warm,
        "peak_reset": reset,
    }


def worker(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measure each spec in turn in this process; specs after the first need a peak reset."""
    import torch

    if threads := os.environ.get("RPEVIT_BENCH_THREADS"):
        torch.set_num_threads(int(threads))
    results = []
    can_reset = _reset_peak()
    for index, spec in enumerate(specs):
        if index > 0 and not can_reset:
            results.append({"retry": True})
            continue
        try:
            results.append(_measure(spec, warm=can_reset))
        except Exception as error:  # report per spec, keep measuring the others
            results.append({"error": f"{type(error).__name__}: {error}"})
        _release_free_memory()
    return results


def _run_worker(specs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]] | None:
    import torch

    env = {**os.environ, **WORKER_ENV, "RPEVIT_BENCH_THREADS": str(torch.get_num_threads())}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rpevit.bench.memory"],
            input=json.dumps(specs),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_peak_memory(
    specs: list[dict[str, Any]], timeout: float = 1800.0
) -> list[dict[str, Any]]:
    """Peak-memory results for ``specs`` (one worker for all; specs of a worker that crashed,
    e.g. killed for lack of memory, are retried one per worker and reported as errors)."""
    if not specs:
        return []
    results = _run_worker(specs, timeout) or [{"retry": True} for _ in specs]
    for index, result in enumerate(results):
        if result.get("retry"):
            single = _run_worker([specs[index]], timeout) if len(specs) > 1 else None
            results[index] = single[0] if single else {"error": "worker died or timed out"}
    return results


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.stdin.read()))))
