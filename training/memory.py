"""Peak device memory per phase of a step, for ``metrics.jsonl`` (``memory/*_peak_gib``).

CUDA's caching allocator keeps a resettable high-water mark of allocated bytes; that call is the only CUDA-only
one here. On CPU there is no such counter (torch's CPU allocator keeps no statistics), so the readings are
``None`` and CPU memory is measured by the ``bench/`` scripts in fresh processes instead.
"""

import torch


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark on ``device`` (CUDA); a no-op on CPU, which has no counter to reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """GiB allocated at the peak since the last ``reset_peak_memory`` (CUDA); ``None`` on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None
