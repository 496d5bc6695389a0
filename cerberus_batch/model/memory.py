"""How many tiles of one shape a forward pass may take at once, from the memory the device has."""

from __future__ import annotations

from typing import Callable

import psutil
import torch

# Peak bytes a CPU forward pass holds per input px (tile plus context), all six heads, fp32: peak
# RSS of one 1008-px tile less the loaded model, over input px (benchmarks/bench_model.py), rounded up.
CPU_BYTES_PER_INPUT_PX = 900
# A CPU batch never holds more: oneDNN keeps every core busy on one 1008-px tile already, so larger
# batches only cost memory, and at the defaults a worker stays within 3 GB.
CPU_BATCH_BYTES = 2 * 2**30
CUDA_FILL = 0.8  # share of the free device memory a batch may take; the allocator fragments the rest


def cpu_budget(memory: float | None = None) -> float:
    """Bytes one CPU batch may hold: half of `memory` (what the predictor may use; default: what is
    free), the rest being its chunks and slides, and at most CPU_BATCH_BYTES."""
    available = float(psutil.virtual_memory().available)
    return min(CPU_BATCH_BYTES, min(available, memory or available) / 2)


def cuda_budget(device: torch.device) -> float:
    """Bytes one CUDA batch may hold: a share of what the device has free, our allocator's cache included."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return CUDA_FILL * (free + cached)


def cuda_bytes_per_input_px(device: torch.device, run_one: Callable[[], None], input_px: int) -> float:
    """Peak device bytes per input px of `run_one` (one forward pass of `input_px` input px)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_one()
    torch.cuda.synchronize(device)
    return max(1, torch.cuda.max_memory_allocated(device) - before) / input_px


def fitting_tiles(budget: float, bytes_per_px: float, input_px: int, largest: int) -> int:
    """As many tiles of `input_px` as fit in `budget`, at least one and at most `largest`."""
    return max(1, min(largest, int(budget // (bytes_per_px * input_px))))
