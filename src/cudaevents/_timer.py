"""Timer: time regions of stream work with recycled event pairs, resolved lazily."""

from __future__ import annotations

import collections
import functools
import itertools
import threading
import time

from ._cpu_stream import CpuStream
from ._event import CudaEvent
from ._pool import default_pool
from ._results import Results, Sample
from ._stream import GpuStream, as_stream
from ._wait import check_timeout

__all__ = ["Timer"]

_cpu_ids = itertools.count(1)


def _nvtx():
    try:
        import nvtx
    except ImportError:
        return None
    return nvtx


class _CpuMark:
    """Host clock readings taken on a CpuStream's thread when it reaches a region's ends."""

    __slots__ = ("start_ns", "end_ns")

    def __init__(self):
        self.start_ns = self.end_ns = None

    def start(self):
        self.start_ns = time.perf_counter_ns()

    def end(self):
        self.end_ns = time.perf_counter_ns()


class _Open:
    """A region between :meth:`Timer.begin` and :meth:`Timer.end`."""

    __slots__ = ("name", "stream", "start", "key", "nvtx")

    def __init__(self, name, stream, start, key, nvtx):
        self.name, self.stream, self.start, self.key, self.nvtx = name, stream, start, key, nvtx


class _Region:
    """``with timer.region(...)``: begins on enter, ends on exit."""

    __slots__ = ("_timer", "_name", "_stream", "_open")

    def __init__(self, timer, name, stream):
        self._timer, self._name, self._stream, self._open = timer, name, stream, None

    def __enter__(self):
        self._open = self._timer.begin(self._name, self._stream)
        return self

    def __exit__(self, *exc):
        self._timer.end(self._open)


class Timer:
    """Times named regions of GPU (or CPU stream) work with pairs of pooled events.

    A region records a timing event where it begins and one where it ends, on its stream;
    nothing waits on the host inside a region. Finished pairs are harvested lazily with
    non-blocking queries (every ``harvest_every`` regions, and on :meth:`harvest`): their
    times are kept and their events go back to the pool, so the live events stay bounded by
    the regions still in flight. :meth:`results` waits for the rest.

    Regions may nest and may run on several streams and devices at once; a region on a
    :class:`CpuStream` is timed with the host clock when the stream reaches its ends. When
    the ``nvtx`` package is installed, each region also opens an NVTX range of the same name
    on the calling thread (``nvtx=False`` turns that off).

    Args:
        pool: the :class:`EventPool` for the events (default: the process-wide pool).
        harvest_every: harvest after this many regions end (default 64).
        nvtx: ``None`` (use NVTX if installed), ``True`` (require it) or ``False``.
    """

    def __init__(self, *, pool=None, harvest_every: int = 64, nvtx: bool | None = None):
        if isinstance(harvest_every, bool) or not isinstance(harvest_every, int) or harvest_every < 1:
            raise ValueError(f"harvest_every must be an int >= 1, got {harvest_every!r}")
        self._pool = default_pool() if pool is None else pool
        self._harvest_every = harvest_every
        module = _nvtx() if nvtx is not False else None
        if nvtx is True and module is None:
            raise ImportError("Timer(nvtx=True) needs the nvtx package: pip install nvtx")
        self._nvtx = module
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], collections.deque] = {}  # per stream, in end order
        self._npending = 0
        self._since_harvest = 0
        self._samples: list[Sample] = []
        self._refs: dict[int, CudaEvent] = {}  # per device: the event times are measured from
        self._cpu_ref_ns = time.perf_counter_ns()
        self._cpu_ids: dict[int, int] = {}  # id(CpuStream) -> small number
        self._names: dict[tuple[int, int], str] = {}

    # -- regions ------------------------------------------------------------------------
    def region(self, name: str, stream=None) -> _Region:
        """A context manager timing the work enqueued on ``stream`` inside the block.

        ``stream`` is anything :func:`as_stream` accepts, a :class:`CpuStream`, or ``None``
        for the legacy default stream of the current device.
        """
        if not isinstance(name, str):
            raise TypeError(f"a region's name is a str, got {type(name).__name__}")
        return _Region(self, name, stream)

    def timed(self, name: str | None = None, stream=None):
        """Decorator: time every call of the function as a region (named after the function
        unless ``name`` is given)."""

        def decorate(fn):
            label = name or getattr(fn, "__qualname__", repr(fn))

            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                token = self.begin(label, stream)
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.end(token)

            return wrapper

        if callable(name):  # used bare: @timer.timed
            fn, name = name, None
            return decorate(fn)
        return decorate

    def begin(self, name: str, stream=None) -> _Open:
        """Open a region on ``stream`` and return its token for :meth:`end` (for hooks
        that cannot use a ``with`` block)."""
        if type(stream) is CpuStream:
            mark = _CpuMark()
            stream.enqueue(mark.start)
            key = (-1, self._cpu_id(stream))
            opened = _Open(name, stream, mark, key, None)
        else:
            s = stream if type(stream) is GpuStream else as_stream(stream)
            if s._device not in self._refs:
                self._set_reference(s)
            start = CudaEvent(timing=True, pool=self._pool).record(s)
            opened = _Open(name, s, start, (s._device, int(s._handle)), None)
        nv = self._nvtx
        if nv is not None:
            nv.push_range(name)
            opened.nvtx = True
        return opened

    def end(self, token: _Open) -> None:
        """Close a region opened by :meth:`begin`."""
        if not isinstance(token, _Open):
            raise TypeError(f"Timer.end() needs the token that begin() returned, got {type(token).__name__}")
        if token.start is None:
            raise ValueError(f"the region {token.name!r} was already ended")
        if token.nvtx:
            self._nvtx.pop_range()
        start, token.start = token.start, None
        if token.key[0] < 0:
            token.stream.enqueue(start.end)
            entry = (token.name, start, None)
        else:
            end = CudaEvent(timing=True, pool=self._pool).record(token.stream)
            entry = (token.name, start, end)
        with self._lock:
            queue = self._pending.get(token.key)
            if queue is None:
                queue = self._pending[token.key] = collections.deque()
            queue.append(entry)
            self._npending += 1
            self._since_harvest += 1
            due = self._since_harvest >= self._harvest_every
        if due:
            self.harvest()

    def _cpu_id(self, stream: CpuStream) -> int:
        key = id(stream)
        n = self._cpu_ids.get(key)
        if n is None:
            with self._lock:
                n = self._cpu_ids.setdefault(key, next(_cpu_ids))
                self._names[(-1, n)] = f"CPU stream {stream.thread.name}"
        return n

    def _set_reference(self, s: GpuStream) -> None:
        ref = CudaEvent(timing=True, pool=self._pool).record(s)
        with self._lock:
            if s._device not in self._refs:
                self._refs[s._device] = ref
                return
        ref.close()

    # -- harvesting ---------------------------------------------------------------------
    def harvest(self) -> int:
        """Collect finished regions without waiting; returns how many were collected."""
        done = 0
        with self._lock:
            self._since_harvest = 0
            for key, queue in self._pending.items():
                while queue:
                    name, start, end = queue[0]
                    sample = self._finished(key, name, start, end)
                    if sample is None:
                        break  # regions on one stream finish in order
                    queue.popleft()
                    self._samples.append(sample)
                    done += 1
            self._npending -= done
        return done

    def _finished(self, key, name, start, end) -> Sample | None:
        device, stream = key
        if device < 0:
            if start.end_ns is None:
                return None
            return Sample(name, device, stream, (start.start_ns - self._cpu_ref_ns) / 1e6,
                          (start.end_ns - start.start_ns) / 1e6)
        if not end.query():
            return None
        ref = self._refs[device]
        sample = Sample(name, device, stream, ref.elapsed_time(start), start.elapsed_time(end))
        start.close()
        end.close()
        return sample

    @property
    def pending(self) -> int:
        """Regions ended but not yet harvested."""
        return self._npending

    @property
    def collected(self) -> int:
        """Regions harvested so far."""
        return len(self._samples)

    def snapshot(self) -> Results:
        """The regions that have finished so far, without waiting for the others."""
        self.harvest()
        with self._lock:
            return Results(self._samples, self._names)

    def discard(self, token: _Open, pop_nvtx: bool = True) -> None:
        """Drop a region opened by :meth:`begin` that can no longer end properly (e.g. the
        code it timed raised past every hook): no sample is kept and its start event goes
        back to the pool. ``pop_nvtx`` closes its NVTX range, which only works on the thread
        that opened it. Discarding an ended or discarded region does nothing."""
        if not isinstance(token, _Open):
            raise TypeError(f"Timer.discard() needs the token that begin() returned, got {type(token).__name__}")
        start, token.start = token.start, None
        if start is None:
            return
        if pop_nvtx and token.nvtx:
            try:
                self._nvtx.pop_range()
            except Exception:  # NVTX ranges are per thread; one pushed elsewhere just stays open
                pass
        if isinstance(start, CudaEvent):
            start.close()

    def synchronize(self, timeout: float | None = None) -> None:
        """Wait for every ended region to finish and harvest it.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.harvest()
            with self._lock:
                waiting = [q[0] for q in self._pending.values() if q]
            if not waiting:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"Timer.synchronize() timed out after {timeout:g} s with {self._npending} region(s) unfinished")
            name, start, end = waiting[0]
            if end is not None:
                end.synchronize(timeout=remaining)
            else:
                time.sleep(min(1e-4, remaining) if remaining is not None else 1e-4)

    def results(self, timeout: float | None = None) -> Results:
        """All regions ended so far, after waiting for them (see :meth:`synchronize`)."""
        self.synchronize(timeout)
        with self._lock:
            return Results(self._samples, self._names)

    def reset(self) -> None:
        """Forget the collected samples (regions still pending are kept)."""
        with self._lock:
            self._samples = []
