"""Timer: time regions of stream work with recycled event pairs, resolved lazily."""

from __future__ import annotations

import collections
import functools
import itertools
import sys
import threading
import time
import weakref

from .._core import compiled, driver
from .._core.cuda_event import TIMING_FLAGS, CudaEvent, synchronize_handle
from .._core.pool import default_pool
from .._core.streams import GpuStream, as_stream, stream_identity, torch_current_stream
from .._core.wait import check_timeout
from .._sync.cpu_stream import CpuStream
from .results import Results, Sample

__all__ = ["Timer"]

_cpu_ids = itertools.count(1)
_MAX_CACHED_STREAMS = 256  # borrowed stream wrappers a Timer keeps; beyond that it starts over
_NAN = float("nan")


def _finished(queue) -> int:
    """How many regions at the head of one stream's queue have finished: their end events
    completed. The stream runs them in order, so the newest end is asked first (at harvest
    time the GPU has usually caught up), then a binary search finds where it is."""
    if not queue:
        return 0
    lo, hi = 0, len(queue) - 1  # ends before lo have finished; the end at hi, maybe not
    if driver.event_query(queue[hi][2]):
        return hi + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if driver.event_query(queue[mid][2]):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _harvest_queue(queue, ref, device, stream, samples, done, sample_type) -> None:
    """The finished head of one GPU stream's queue of regions ``(name, start, end, step)``
    becomes ``sample_type`` tuples appended to ``samples``, timed from the event ``ref`` (NaN
    start times when ``None``); each harvested region's two handles go to ``done`` as it
    leaves the queue, so an error loses none. (The compiled path replaces this function.)"""
    elapsed = driver.event_elapsed_ms
    append, new = samples.append, tuple.__new__
    for _ in range(_finished(queue)):
        name, start, end, step = queue[0]
        ms = elapsed(start, end)
        at = _NAN if ms is None or ref is None else elapsed(ref, start)
        if ms is None or at is None:  # threads ended regions out of stream order
            break
        queue.popleft()
        append(new(sample_type, (name, device, stream, at, ms, step)))
        done.append(start)
        done.append(end)


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
    """A region: the context manager that :meth:`Timer.region` returns (begun on enter, ended
    on exit) and the token of :meth:`Timer.begin`. On a GPU stream ``start`` and ``end`` are
    the region's native event handles; on a CPU stream ``start`` is a :class:`_CpuMark`.
    ``start`` is ``None`` before the region begins and once it has ended.

    The begin and end paths live here, not in Timer methods, to spare the hot path a call."""

    __slots__ = ("timer", "name", "stream", "start", "end", "key", "nvtx")

    def __init__(self, timer, name, stream=None):
        if type(name) is not str and not isinstance(name, str):
            raise TypeError(f"a region's name is a str, got {type(name).__name__}")
        self.timer, self.name, self.stream = timer, name, stream
        self.start = self.end = self.key = None
        self.nvtx = False

    def __enter__(self):
        if self.key is not None:
            raise ValueError(f"the region {self.name!r} was already begun; a region is entered once")
        timer, stream = self.timer, self.stream
        kind = type(stream)
        if kind is GpuStream:
            s = stream
        elif kind is CpuStream:
            timer._begin_cpu(self)
            return self
        else:
            s = self.stream = timer._gpu_stream(stream)
        device = s._device
        spare = timer._spare.get(device)
        if spare is None:
            spare = timer._first_region_on(s)
        try:  # two handles from the timer's spares (list pops are atomic), else from the pool
            start = spare.pop()
        except IndexError:
            start, end = timer._pool.acquire_many(device, TIMING_FLAGS, 2)
        else:
            try:
                end = spare.pop()
            except IndexError:
                end = timer._pool.acquire(device, TIMING_FLAGS)
        try:
            s._record(start)
        except BaseException:
            spare += (start, end)
            raise
        self.start, self.end, self.key = start, end, (device, s._id)
        if timer._nvtx is not None:
            timer._push_nvtx(self)
        return self

    def __exit__(self, *exc):
        start = self.start
        if start is None:
            if self.key is None:
                raise ValueError(f"the region {self.name!r} was never begun; use it in a with block")
            raise ValueError(f"the region {self.name!r} was already ended")
        self.start = None
        timer = self.timer
        if self.nvtx:
            timer._nvtx.pop_range()
        key = self.key
        if key[0] < 0:
            self.stream.enqueue(start.end)
            entry = (self.name, start, None, timer._step)
        else:
            s, end = self.stream, self.end
            try:
                s._record(end)
            except BaseException:
                timer._spare[key[0]] += (start, end)
                raise
            entry = (self.name, start, end, timer._step)
        queue = timer._pending.get(key)
        if queue is None:
            queue = timer._new_queue(key)
        queue.append(entry)
        timer._since_harvest += 1  # unlocked: it only paces harvesting
        if timer._since_harvest >= timer._harvest_every:
            timer.harvest()


compiled.register(_Open, ("__init__", "__enter__", "__exit__"), lambda hot, cls, python: hot.install_region(cls, python))
compiled.register(sys.modules[__name__], ("_harvest_queue",), lambda hot, module, python: {"_harvest_queue": hot.harvest_queue},
                  needs_driver=True)


class _Laps:
    """Back-to-back phases on one stream, each beginning where the one before ends, one
    timing event between two phases: what :meth:`Timer.laps` returns."""

    __slots__ = ("timer", "stream", "open", "state")

    def __init__(self, timer, stream):
        if type(stream) is not GpuStream and type(stream) is not CpuStream:
            stream = timer._gpu_stream(stream)
        self.timer, self.stream, self.open, self.state = timer, stream, None, "new"

    def __enter__(self):
        if self.state != "new":
            raise ValueError("these laps were entered already; start new ones with timer.laps()")
        self.state = "entered"
        return self

    def __call__(self, name: str) -> None:
        """End the phase running now (if any) and begin the phase ``name`` here."""
        if self.state != "entered":
            raise ValueError("laps are taken inside their with block: with timer.laps(stream) as lap: lap('name')"
                             if self.state == "new" else
                             "these laps have ended (their with block was left); start new ones with timer.laps()")
        if type(name) is not str and not isinstance(name, str):
            raise TypeError(f"a phase's name is a str, got {type(name).__name__}")
        timer, open_ = self.timer, self.open
        if type(self.stream) is GpuStream:
            self.open = timer._meet([] if open_ is None else [open_], [name], self.stream)[0]
        else:
            if open_ is not None:
                timer.end(open_)
            self.open = timer.begin(name, self.stream)

    def __exit__(self, *exc):
        self.state = "ended"
        open_, self.open = self.open, None
        if open_ is not None:  # the last phase ends here, as a region does when an exception passes
            self.timer.end(open_)


compiled.register(_Laps, ("__call__",), lambda hot, cls, python: hot.install_laps(cls, python))


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

    A region is two records of timing events, and CUDA queues at most about a thousand of
    those (with kernel launches, which share the queue) behind work a stream has not finished:
    on an H200 the 511th region behind a busy stream blocks the thread until the GPU catches
    up, as timing records or launches written by hand would (README, "How many operations
    queue behind unfinished work").

    Args:
        pool: the :class:`EventPool` for the events (default: the process-wide pool).
        harvest_every: harvest after this many regions end (default 64).
        nvtx: ``None`` (use NVTX if installed), ``True`` (require it) or ``False``.
        timeline: also measure when each region starts (``Sample.start_ms``, for traces and
            timelines). ``False`` spares one driver call per region; start times are then NaN
            and the results can be summarized but not drawn as a trace or timeline.
    """

    __slots__ = ("_pool", "_harvest_every", "_nvtx", "_lock", "_pending", "_since_harvest", "_step", "_samples",
                 "_refs", "_ref_done", "_cpu_ref_ns", "_cpu_ids", "_names", "_streams", "_spare", "_spare_cap",
                 "_shared", "_timeline", "__dict__", "__weakref__")  # (__dict__: the instances' region partial)

    def __init__(self, *, pool=None, harvest_every: int = 64, nvtx: bool | None = None, timeline: bool = True):
        if isinstance(harvest_every, bool) or not isinstance(harvest_every, int) or harvest_every < 1:
            raise ValueError(f"harvest_every must be an int >= 1, got {harvest_every!r}")
        self._pool = default_pool() if pool is None else pool
        self._harvest_every = harvest_every
        module = _nvtx() if nvtx is not False else None
        if nvtx is True and module is None:
            raise ImportError("Timer(nvtx=True) needs the nvtx package: pip install nvtx")
        self._nvtx = module
        self._lock = threading.Lock()  # guards harvesting, the samples and new keys of _pending
        # Per stream, the ended regions in end order: (name, start, end, step). On a GPU stream
        # start and end are native event handles from the pool; on a CPU stream start is a
        # _CpuMark (and end None).
        self._pending: dict[tuple[int, int], collections.deque] = {}
        self._since_harvest = 0
        self._step = 0  # the step index regions ending now carry (step())
        self._samples: list[Sample] = []
        self._refs: dict[int, CudaEvent] = {}  # per device: the event times are measured from
        self._ref_done: set[int] = set()  # devices whose reference event has completed
        self._cpu_ref_ns = time.perf_counter_ns()
        self._cpu_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # CpuStream -> number
        self._names: dict[tuple[int, int], str] = {}
        self._streams: dict[tuple[int, int], GpuStream] = {}  # (handle, device) -> borrowed wrapper
        # Per device, harvested handles kept for the next regions (at most _spare_cap; the rest
        # go back to the pool, and all of them when synchronize() finds nothing pending).
        self._spare: dict[int, list] = {}
        self._spare_cap = 2 * harvest_every
        # Handles that several regions share (_meet): how many of them have not yet been
        # harvested or discarded; the last one gives the handle back.
        self._shared: dict[int, int] = {}
        self._timeline = bool(timeline)
        # region() without a Python-level call of its own: the same as the method below
        self.region = functools.partial(_Open, self)

    # -- regions ------------------------------------------------------------------------
    def region(self, name: str, stream=None) -> _Open:
        """A context manager timing the work enqueued on ``stream`` inside the block.

        ``stream`` is anything :func:`as_stream` accepts, a :class:`CpuStream`, or ``None``:
        torch's current stream at the region's beginning where the program uses CUDA through
        torch (inside ``with torch.cuda.stream(s):`` that is ``s``, as for LayerTimer and
        :func:`benchmark`), else the legacy default stream of the current device.
        """
        return _Open(self, name, stream)  # (instances call _Open directly: see __init__)

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

    def laps(self, stream=None) -> _Laps:
        """Back-to-back phases on ``stream`` (as :meth:`region` takes it), for loops whose
        phases follow one another (data, forward, backward, optimizer): inside the ``with``
        block, ``lap(name)`` ends the phase running (if any) and begins ``name``, and leaving
        the block ends the last one. On a GPU stream the end of one phase and the start of the
        next are one timing event, so N phases cost N + 1 records instead of 2N::

            with timer.laps(stream) as lap:
                for batch in loader:
                    lap("forward"); loss = model(batch)
                    lap("backward"); loss.backward()
                    lap("optimizer"); opt.step()

        Each phase is a region of this timer (results, NVTX ranges and traces as for
        :meth:`region`). Laps are taken from one thread at a time; what the program enqueues
        on the stream between two laps belongs to the phase between them."""
        return _Laps(self, stream)

    def begin(self, name: str, stream=None) -> _Open:
        """Open a region on ``stream`` and return its token for :meth:`end` (for hooks
        that cannot use a ``with`` block)."""
        return _Open(self, name, stream).__enter__()

    def end(self, token: _Open) -> None:
        """Close a region opened by :meth:`begin`."""
        self._check_token(token, "end")
        token.__exit__(None, None, None)

    def _meet(self, ending: list, names: list, stream: GpuStream) -> list:
        """End the regions ``ending`` (tokens) and begin a region per name of ``names`` on
        ``stream``, at one point: those ending on ``stream`` and those beginning share one
        timing event, recorded there once. The caller makes sure that nothing is enqueued
        on ``stream`` between these ends and begins (LayerTimer's backward, where one module's
        backward ends as the next one's begins). Returns the new tokens, in ``names`` order."""
        s = stream
        key = (s._device, s._id)
        here = []
        for token in ending:
            if token.start is None:
                continue
            if token.key == key:
                here.append(token)
            else:
                token.__exit__(None, None, None)
        if len(here) + len(names) < 2:  # nothing to share
            for token in here:
                token.__exit__(None, None, None)
            return [_Open(self, name, s).__enter__() for name in names]
        return self._share(here, names, s, key)

    def _share(self, here: list, names: list, s: GpuStream, key: tuple) -> list:
        """The rest of :meth:`_meet` where regions share the event: end ``here`` (open regions
        on ``s``, whose queue ``key`` is) and begin ``names`` at one record on ``s``."""
        device = s._device
        spare = self._spare.get(device)
        if spare is None:
            spare = self._first_region_on(s)
        handles = []
        try:
            for _ in range(1 + len(names)):
                handles.append(spare.pop())
        except IndexError:
            handles += self._pool.acquire_many(device, TIMING_FLAGS, 1 + len(names) - len(handles))
        mark = handles[0]
        try:
            s._record(mark)
        except BaseException:
            spare += handles
            raise
        # No lock: ``mark`` is fresh (a shared handle reaches the spares only once its count is
        # gone), and one dict store is atomic; harvests change other handles' counts meanwhile.
        self._shared[mark] = len(here) + len(names)
        nvtx, step = self._nvtx, self._step
        queue = self._pending.get(key)
        if queue is None:
            queue = self._new_queue(key)
        for token in here:
            start, token.start = token.start, None
            if token.nvtx:
                nvtx.pop_range()
            spare.append(token.end)  # taken at its begin, not needed now
            token.end = mark
            queue.append((token.name, start, mark, step))
        began = []
        for name, end in zip(names, handles[1:]):
            token = _Open(self, name, s)
            token.start, token.end, token.key = mark, end, key
            if nvtx is not None:
                self._push_nvtx(token)
            began.append(token)
        self._since_harvest += len(here)
        if self._since_harvest >= self._harvest_every:
            self.harvest()
        return began

    def _unshared(self, handles: list) -> list:
        """Of ``handles`` that regions are done with, those to give back: all but shared ones
        that other regions still use. Called under the lock."""
        shared, out = self._shared, []
        for h in handles:
            n = shared.get(h)
            if n is None:
                out.append(h)
            elif n == 1:
                del shared[h]
                out.append(h)
            else:
                shared[h] = n - 1
        return out

    def _check_token(self, token, what: str) -> None:
        if type(token) is not _Open:
            raise TypeError(f"Timer.{what}() needs the token that begin() returned, got {type(token).__name__}")
        if token.timer is not self:
            raise ValueError(f"the region {token.name!r} belongs to another Timer; {what} it there")

    def _begin_cpu(self, token: _Open) -> None:
        mark = _CpuMark()
        token.stream.enqueue(mark.start)
        token.start, token.key = mark, (-1, self._cpu_id(token.stream))
        if self._nvtx is not None:
            self._push_nvtx(token)

    def _push_nvtx(self, token: _Open) -> None:
        self._nvtx.push_range(token.name)
        token.nvtx = True

    def _first_region_on(self, s: GpuStream) -> list:
        """Set up a device at its first region: the reference event, the spare list."""
        ref = CudaEvent(timing=True, pool=self._pool).record(s)
        with self._lock:
            if s._device not in self._refs:
                self._refs[s._device] = ref
                ref = None
            spare = self._spare.setdefault(s._device, [])
        if ref is not None:
            ref.close()
        return spare

    def _new_queue(self, key) -> collections.deque:
        with self._lock:
            return self._pending.setdefault(key, collections.deque())

    def _gpu_stream(self, stream) -> GpuStream:
        """``as_stream(stream)``, without re-wrapping a stream object seen before: streams
        that state their device are cached as (handle, device) -> wrapper. ``None`` is
        torch's current stream where the program uses CUDA through torch (as LayerTimer and
        benchmark() take it), else the legacy default stream of the current device."""
        identity = torch_current_stream() if stream is None else stream_identity(stream)
        if identity is None or identity[1] is None:
            return as_stream(stream)
        s = self._streams.get(identity)
        if s is None:
            s = as_stream(*identity) if stream is None else as_stream(stream)
            if len(self._streams) >= _MAX_CACHED_STREAMS:
                self._streams.clear()
            # the wrapper keeps no owner: each region records while its caller holds the stream
            s = self._streams[identity] = GpuStream._borrow(s._id, s._device, None)
        return s

    def _cpu_id(self, stream: CpuStream) -> int:
        n = self._cpu_ids.get(stream)
        if n is None:
            with self._lock:
                n = self._cpu_ids.get(stream)
                if n is None:
                    n = self._cpu_ids[stream] = next(_cpu_ids)
                    self._names[(-1, n)] = f"CPU stream {stream.thread.name}"
        return n

    def step(self) -> int:
        """Begin the next step of a loop: regions that end from now on carry the next step
        index (``Sample.step``; 0 before the first call), so results can be grouped by step
        (:meth:`Results.by_step`). Returns the new index. Costs nothing on the GPU."""
        self._step += 1
        return self._step

    # -- harvesting ---------------------------------------------------------------------
    def harvest(self) -> int:
        """Collect finished regions without waiting; returns how many were collected."""
        done = 0
        with self._lock:
            self._since_harvest = 0
            for key, queue in self._pending.items():
                if queue:
                    done += self._harvest_cpu(key, queue) if key[0] < 0 else self._harvest_gpu(key, queue)
        return done

    def _harvest_gpu(self, key, queue) -> int:
        """Harvest the finished head of one GPU stream's queue (regions there finish in order).

        Only finished pairs are read. cuEventQuery finds how far the stream has got: its
        NOT_READY is a status, while cuEventElapsedTime's is an error return, which
        compute-sanitizer reports, so reading pending pairs would fill the reports of a
        profiled program with errors that are not there."""
        device, stream = key
        ref = None
        if self._timeline:
            ref = self._refs[device]._handle
            if device not in self._ref_done:  # a reference on a lagging stream holds all back
                if not driver.event_query(ref):
                    return 0
                self._ref_done.add(device)
        done = []
        try:
            _harvest_queue(queue, ref, device, stream, self._samples, done, Sample)
        finally:
            n = len(done) // 2
            if done and self._shared:
                done = self._unshared(done)
            if done:
                self._keep_spare(device, done)
        return n

    def _keep_spare(self, device: int, handles: list) -> None:
        """Keep harvested handles for the next regions, up to the cap; the rest go to the pool."""
        spare = self._spare[device]
        room = self._spare_cap - len(spare)
        if room >= len(handles):
            spare += handles
            return
        if room > 0:
            spare += handles[:room]
            handles = handles[room:]
        self._pool.release_many(device, TIMING_FLAGS, handles)

    def _return_spare(self) -> None:
        """Give every spare handle back to the pool (nothing is pending)."""
        for device, spare in self._spare.items():
            handles = []
            while spare:  # pop by pop: a region on another thread may be taking spares too
                try:
                    handles.append(spare.pop())
                except IndexError:
                    break
            self._pool.release_many(device, TIMING_FLAGS, handles)

    def _harvest_cpu(self, key, queue) -> int:
        device, stream = key
        n = 0
        while queue:
            name, mark, _, step = queue[0]
            if mark.end_ns is None:
                break
            queue.popleft()
            self._samples.append(Sample(name, device, stream, (mark.start_ns - self._cpu_ref_ns) / 1e6,
                                        (mark.end_ns - mark.start_ns) / 1e6, step))
            n += 1
        return n

    @property
    def pending(self) -> int:
        """Regions ended but not yet harvested."""
        return sum(map(len, list(self._pending.values())))

    @property
    def collected(self) -> int:
        """Regions harvested so far."""
        return len(self._samples)

    def snapshot(self) -> Results:
        """The regions that have finished so far, without waiting for the others."""
        self.harvest()
        with self._lock:
            return Results(self._samples, self._names)

    def _wall_origins(self, timeout: float = 10.0) -> dict[int, tuple[float, float]]:
        """Where this timer's reference points lie on the host's wall clock: per device with
        regions, and -1 for CPU streams, (microseconds since the epoch, error bound in us).

        On each device a timing event is recorded on an idle stream of its own and polled,
        the wall clock read before the record and once it has completed: it ran within that
        window (its midpoint is taken, half its width is the bound), and its elapsed time
        from the reference event places the reference. Waits for the reference event."""
        before = time.time_ns()
        now = time.perf_counter_ns()
        after = time.time_ns()
        origins = {-1: (((before + after) / 2 - (now - self._cpu_ref_ns)) / 1e3, (after - before) / 2e3)}
        deadline = time.monotonic() + timeout
        for device, ref in list(self._refs.items()):
            ref.synchronize(timeout=timeout)
            with GpuStream(device) as idle:
                probe = CudaEvent(device, timing=True, pool=self._pool)
                try:
                    before = time.time_ns()
                    probe.record(idle)
                    while not probe.query():
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"an event on an idle stream of device {device} did not complete "
                                               f"within {timeout:g} s")
                    after = time.time_ns()
                    ms = ref.elapsed_time(probe)
                finally:
                    probe.close()
            origins[device] = ((before + after) / 2e3 - ms * 1e3, (after - before) / 2e3)
        return origins

    def discard(self, token: _Open, pop_nvtx: bool = True) -> None:
        """Drop a region opened by :meth:`begin` that can no longer end properly (e.g. the
        code it timed raised past every hook): no sample is kept and its events go back to
        the pool. ``pop_nvtx`` closes its NVTX range, which only works on the thread
        that opened it. Discarding an ended or discarded region does nothing. (A region that
        is begun and then neither ended nor discarded keeps its two events for good.)"""
        self._check_token(token, "discard")
        start, token.start = token.start, None
        if start is None:
            return
        if pop_nvtx and token.nvtx:
            try:
                self._nvtx.pop_range()
            except Exception:  # NVTX ranges are per thread; one pushed elsewhere just stays open
                pass
        if token.key[0] >= 0:
            handles = [start, token.end]
            if self._shared:
                with self._lock:
                    handles = self._unshared(handles)
            self._spare[token.key[0]] += handles

    def synchronize(self, timeout: float | None = None) -> None:
        """Wait for every ended region to finish and harvest it; then the events the timer
        kept for its next regions go back to the pool too.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.harvest()
            with self._lock:
                heads = [(key, q[0]) for key, q in self._pending.items() if q]
                if not heads:
                    self._return_spare()
                    return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"Timer.synchronize() timed out after {timeout:g} s with {self.pending} region(s) unfinished")
            (device, _), (_, _, end, _) = heads[0]
            if end is None:  # a CPU stream's region: its thread sets the mark
                time.sleep(min(1e-4, remaining) if remaining is not None else 1e-4)
                continue
            try:
                synchronize_handle(end, remaining, "Timer.synchronize()")
                # the end has finished; the reference (maybe on a slower stream) must finish too
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                synchronize_handle(self._refs[device]._handle, remaining, "Timer.synchronize()")
            except TimeoutError:
                raise TimeoutError(f"Timer.synchronize() timed out after {timeout:g} s with {self.pending} "
                                   "region(s) unfinished") from None

    def results(self, timeout: float | None = None) -> Results:
        """All regions ended so far, after waiting for them (see :meth:`synchronize`)."""
        self.synchronize(timeout)
        with self._lock:
            return Results(self._samples, self._names)

    def __del__(self):
        # Hand every event back: the spares, and those of regions still pending (a release
        # while a record is pending is fine, see EventPool). Regions begun and never ended or
        # discarded keep their two events. Never through the pool's lock: the collector may
        # run this finalizer in a thread inside it (DESIGN.md, "What may run inside a lock").
        try:
            give_back = self._pool.release_many_deferred
            for (device, _), queue in self._pending.items():
                if device >= 0 and queue:
                    handles = list(dict.fromkeys(h for _, start, end, _ in queue for h in (start, end)))
                    queue.clear()
                    give_back(device, TIMING_FLAGS, handles)
            for device, spare in self._spare.items():
                handles, spare[:] = spare[:], []
                give_back(device, TIMING_FLAGS, handles)
        except Exception:  # a finalizer must not raise (e.g. __init__ failed half way)
            pass

    def reset(self) -> None:
        """Forget the collected samples (regions still pending are kept)."""
        with self._lock:
            self._samples = []


compiled.register(Timer, ("begin", "end", "_unshared", "_meet"), lambda hot, cls, python: hot.install_timer(cls, python))
