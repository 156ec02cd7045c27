"""Machine telemetry for the UI: GPUs through NVML, the host and the worker processes through psutil.

Headless (never imports textual). Modelled on nvitop: NVML is called directly, every query has a
default (``None``, printed as "N/A") instead of raising, a missing library or driver is reported
once at start as a readable state, and sampling runs in a daemon thread that keeps bounded
histories (``deque(maxlen=...)``) and publishes the latest snapshot under a lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

MIN_INTERVAL = 0.5
MAX_INTERVAL = 2.0
DEFAULT_INTERVAL = 1.0
DEFAULT_HISTORY = 120  # two minutes at the default interval


def clamp_interval(seconds: float) -> float:
    """Sampling interval clamped to 0.5–2 s: faster costs CPU the workers need, slower looks dead."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, float(seconds)))


def na(value: Any, fmt: str = "{}") -> str:
    """Format a figure that may be missing: ``None`` prints as "N/A"."""
    return "N/A" if value is None else fmt.format(value)


# --- samples ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str = "N/A"
    memory_used: int | None = None  # bytes
    memory_total: int | None = None  # bytes
    utilization: float | None = None  # percent
    power_draw: float | None = None  # watts
    power_limit: float | None = None  # watts
    temperature: float | None = None  # °C

    @property
    def memory_percent(self) -> float | None:
        if self.memory_used is None or not self.memory_total:
            return None
        return 100.0 * self.memory_used / self.memory_total


@dataclass(frozen=True)
class HostSample:
    cpu_percent: float | None = None
    memory_used: int | None = None  # bytes
    memory_total: int | None = None  # bytes
    memory_percent: float | None = None
    cpu_count: int | None = None


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    alive: bool
    rss: int | None = None  # bytes
    cpu_percent: float | None = None  # of one core (can exceed 100 with several threads)


@dataclass(frozen=True)
class TelemetrySnapshot:
    seq: int
    ts: float
    gpu_available: bool
    gpu_status: str  # a readable line: "2 NVIDIA GPUs", "no NVIDIA GPU: …", "NVML query failed: …"
    gpus: tuple[GpuSample, ...]
    host: HostSample
    processes: dict[int, ProcessSample] = field(default_factory=dict)


# --- sources ---------------------------------------------------------------------------------


class GpuUnavailable(Exception):
    """NVML cannot be used on this machine (no library, no driver, no device)."""


class GpuSource(Protocol):
    def start(self) -> int:
        """Initialise; return the device count or raise ``GpuUnavailable`` with a readable reason."""
        ...

    def sample(self) -> list[GpuSample]: ...

    def shutdown(self) -> None: ...


class NvmlSource:
    """GPUs through NVML (the ``pynvml`` module of nvidia-ml-py, or any object with its API)."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._handles: list[Any] = []
        self._last_error: Exception | None = None  # the last NVML call that failed
        self._names: list[str] = []

    def start(self) -> int:
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:  # nvidia-ml-py missing
                raise GpuUnavailable(
                    f"no NVIDIA GPU: NVML not available (nvidia-ml-py is not installed: {exc})"
                ) from exc
            self._nvml = nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            raise GpuUnavailable(f"no NVIDIA GPU: NVML not available ({_reason(exc)})") from exc
        try:
            count = int(nvml.nvmlDeviceGetCount())
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            self.shutdown()
            raise GpuUnavailable(
                f"no NVIDIA GPU: NVML could not list devices ({_reason(exc)})"
            ) from exc
        if count == 0:
            self.shutdown()
            raise GpuUnavailable("no NVIDIA GPU: NVML found no devices")
        self._names = [
            _text(self._query(nvml.nvmlDeviceGetName, h)) or f"GPU {i}"
            for i, h in enumerate(self._handles)
        ]
        return count

    def _query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One NVML call; any failure (NVMLError, a lost GPU, a missing symbol) gives ``None``."""
        try:
            return fn(*args)
        except Exception as exc:
            self._last_error = exc
            return None

    def sample(self) -> list[GpuSample]:
        """One reading of every GPU; a figure NVML cannot give is ``None``. When not one figure
        of any GPU could be read, NVML itself is down: that raises (the sampler says so)."""
        nvml, q = self._nvml, self._query
        self._last_error = None
        out = []
        for i, h in enumerate(self._handles):
            mem = q(nvml.nvmlDeviceGetMemoryInfo, h)
            util = q(nvml.nvmlDeviceGetUtilizationRates, h)
            power = q(nvml.nvmlDeviceGetPowerUsage, h)  # milliwatts
            limit = q(nvml.nvmlDeviceGetEnforcedPowerLimit, h)  # milliwatts
            temp = q(nvml.nvmlDeviceGetTemperature, h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
            out.append(
                GpuSample(
                    i,
                    self._names[i],
                    _attr(mem, "used"),
                    _attr(mem, "total"),
                    _float(_attr(util, "gpu")),
                    None if power is None else _float(power, 1e-3),
                    None if limit is None else _float(limit, 1e-3),
                    _float(temp),
                )
            )
        dead = all(
            (g.memory_used, g.utilization, g.power_draw, g.temperature) == (None,) * 4 for g in out
        )
        if out and dead and self._last_error is not None:
            raise self._last_error
        return out

    def shutdown(self) -> None:
        if self._nvml is not None:
            self._query(self._nvml.nvmlShutdown)
        self._handles = []


class HostSource:
    """Host CPU and memory, and the worker processes, through psutil (each figure may be ``None``)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._procs: dict[int, Any] = {}
        self._query(psutil.cpu_percent, None)  # the first call only sets the baseline

    @staticmethod
    def _query(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            return None

    def host(self) -> HostSample:
        ps = self._psutil
        mem = self._query(ps.virtual_memory)
        return HostSample(
            _float(self._query(ps.cpu_percent, None)),
            _attr(mem, "used"),
            _attr(mem, "total"),
            _float(_attr(mem, "percent")),
            self._query(ps.cpu_count),
        )

    def processes(self, pids: Iterable[int]) -> dict[int, ProcessSample]:
        ps, out = self._psutil, {}
        wanted = set(pids)
        for pid in list(self._procs):
            if pid not in wanted:
                del self._procs[pid]
        for pid in wanted:
            try:
                proc = self._procs.get(pid)
                if proc is None:
                    proc = self._procs[pid] = ps.Process(pid)
                    proc.cpu_percent(None)  # baseline; the next sample has a real figure
                with proc.oneshot():
                    out[pid] = ProcessSample(
                        pid, True, int(proc.memory_info().rss), _float(proc.cpu_percent(None))
                    )
            except Exception:  # gone, a zombie, access denied
                self._procs.pop(pid, None)
                out[pid] = ProcessSample(pid, False)
        return out


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _attr(obj: Any, name: str) -> Any:
    return None if obj is None else getattr(obj, name, None)


def _float(value: Any, scale: float = 1.0) -> float | None:
    try:
        return None if value is None else float(value) * scale
    except (TypeError, ValueError):
        return None


# --- the sampler -----------------------------------------------------------------------------


class TelemetrySampler:
    """Samples the GPUs, the host and the watched processes every ``interval`` seconds (clamped
    to 0.5–2 s) in a daemon thread; ``latest()`` and ``history()`` are safe from any thread."""

    def __init__(
        self,
        gpu_source: GpuSource | None = None,
        host_source: Any = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self.interval = clamp_interval(interval)
        self._gpu = gpu_source if gpu_source is not None else NvmlSource()
        self._host = host_source
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pids: set[int] = set()
        self._latest: TelemetrySnapshot | None = None
        self._seq = 0
        self._gpu_started = False
        self._gpu_available = False
        self._gpu_status = "GPUs not probed yet"
        self._maxlen = max(2, int(history))
        self.cpu_history: deque[float | None] = deque(maxlen=self._maxlen)
        self.ram_history: deque[float | None] = deque(maxlen=self._maxlen)
        self.gpu_util_history: dict[int, deque[float | None]] = {}
        self.gpu_memory_history: dict[int, deque[float | None]] = {}

    # --- control ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="genesis-telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._gpu_available:
            try:
                self._gpu.shutdown()
            except Exception:
                pass

    def watch(self, pids: Iterable[int]) -> None:
        """Replace the set of process ids sampled for RSS and CPU (the workers)."""
        with self._lock:
            self._pids = {int(p) for p in pids}

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:  # never let the thread die; the next tick tries again
                pass
            self._stop.wait(self.interval)

    # --- sampling ---------------------------------------------------------------------------

    def _start_gpu(self) -> None:
        self._gpu_started = True
        try:
            count = self._gpu.start()
        except GpuUnavailable as exc:
            self._gpu_available, self._gpu_status = False, str(exc)
        except Exception as exc:
            self._gpu_available = False
            self._gpu_status = f"no NVIDIA GPU: NVML not available ({_reason(exc)})"
        else:
            self._gpu_available = True
            self._gpu_status = f"{count} NVIDIA GPU{'s' if count != 1 else ''}"

    def sample_once(self) -> TelemetrySnapshot:
        """Take one sample now (the thread calls this; tests may call it directly)."""
        if not self._gpu_started:
            self._start_gpu()
        if self._host is None:
            self._host = HostSource()
        gpus: tuple[GpuSample, ...] = ()
        status = self._gpu_status
        if self._gpu_available:
            previous = self._latest.gpus if self._latest is not None else ()
            try:
                gpus = tuple(self._gpu.sample())
                status = self._gpu_status
            except Exception as exc:  # the whole query failed: keep the rows, figures N/A
                gpus = tuple(GpuSample(g.index, g.name) for g in previous)
                status = f"NVML query failed: {_reason(exc)}"
        with self._lock:
            pids = set(self._pids)
        try:
            host = self._host.host()
        except Exception:
            host = HostSample()
        try:
            procs = self._host.processes(pids) if pids else {}
        except Exception:
            procs = {pid: ProcessSample(pid, False) for pid in pids}
        with self._lock:
            self._seq += 1
            snap = TelemetrySnapshot(
                self._seq, time.time(), self._gpu_available, status, gpus, host, procs
            )
            self._latest = snap
            self.cpu_history.append(host.cpu_percent)
            self.ram_history.append(host.memory_percent)
            for g in gpus:
                self.gpu_util_history.setdefault(g.index, deque(maxlen=self._maxlen)).append(
                    g.utilization
                )
                self.gpu_memory_history.setdefault(g.index, deque(maxlen=self._maxlen)).append(
                    g.memory_percent
                )
        return snap

    # --- reading (any thread) ---------------------------------------------------------------

    def latest(self) -> TelemetrySnapshot | None:
        with self._lock:
            return self._latest

    def history(self) -> dict[str, Any]:
        """Copies of the histories: ``cpu`` and ``ram`` lists, ``gpu_util`` and ``gpu_memory``
        dicts of lists by GPU index; missing figures are ``None``."""
        with self._lock:
            return {
                "cpu": list(self.cpu_history),
                "ram": list(self.ram_history),
                "gpu_util": {i: list(d) for i, d in self.gpu_util_history.items()},
                "gpu_memory": {i: list(d) for i, d in self.gpu_memory_history.items()},
            }
