"""Memory sampling the allocator cannot see: device-level (NVML) and host RSS, on a thread."""

from __future__ import annotations

import threading
import time


def _nvml_handle(local_index: int):
    try:
        import pynvml

        pynvml.nvmlInit()
        from autofit.hardware import detect_gpus

        # NVML numbers devices physically; CUDA_VISIBLE_DEVICES renumbers them for torch.
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(detect_gpus()[local_index].nvml_index)
    except Exception:  # no NVML (CPU run, container without the library): device peak unknown
        return None, None


class PeakSampler:
    """Polls NVML used-memory and process RSS every few milliseconds and keeps the maxima."""

    def __init__(self, cuda_index: int | None, interval_s: float = 0.005):
        import psutil

        self._proc = psutil.Process()
        self._nvml, self._handle = _nvml_handle(cuda_index) if cuda_index is not None else (None, None)
        self._interval = interval_s
        self._stop = threading.Event()
        self.nvml_peak: int | None = None
        self.host_peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except Exception:
                pass
        self.host_peak = max(self.host_peak, rss)
        if self._handle is not None:
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
            self.nvml_peak = max(self.nvml_peak or 0, used)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:
                pass
            time.sleep(self._interval)

    def reset(self) -> None:
        self.nvml_peak = None if self._handle is None else 0
        self.host_peak = 0
        self._sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
