"""Peak memory of a block of work: what a training run costs, comparable across methods.

On a GPU this is ``torch.cuda.max_memory_allocated`` (reset at the start). On CPU it is the peak
resident set size of this process while the block ran: Linux keeps a high-water mark (``VmHWM``)
that ``/proc/self/clear_refs`` resets, so the figure is the block's own peak even if the process
used more earlier. Where that reset is impossible the lifetime peak (``ru_maxrss``) is reported and
``reset`` says so.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # 5 = reset the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _lifetime_peak_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes


@dataclass
class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.peak_mb``, ``peak.start_mb``, ``peak.device``."""

    device: str = "cpu"
    start_mb: float = 0.0
    peak_mb: float = 0.0
    reset: bool = True

    def __enter__(self) -> "PeakMemory":
        import torch

        if torch.cuda.is_available():
            self.device = "cuda"
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self.device = "cpu"
            self.reset = _reset_rss_peak()
            current = _status_kb("VmRSS")
            self.start_mb = (current or 0) / 1024
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = _status_kb("VmHWM") if self.reset else None
            self.peak_mb = (peak if peak is not None else _lifetime_peak_kb()) / 1024
        self.peak_mb = round(self.peak_mb, 1)
        self.start_mb = round(self.start_mb, 1)

    @property
    def extra_mb(self) -> float:
        """Peak above what was in use when the block started (the block's own working memory)."""
        return round(max(0.0, self.peak_mb - self.start_mb), 1)

    def as_summary(self) -> dict:
        return {"peak_memory_mb": self.peak_mb, "peak_memory_extra_mb": self.extra_mb, "memory_device": self.device,
                "peak_memory_reset": self.reset}
