"""The event pool: LIFO free lists of native event handles keyed by (device, flags)."""

from __future__ import annotations

import collections
import dataclasses
import threading
import weakref

from . import compiled, driver, env
from .lifetime import after_fork_in_child, drain, state

__all__ = ["EventPool", "PoolStats", "default_pool"]


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """Exact counts of an :class:`EventPool` (for one device, or all of them).

    Attributes:
        creates: native handles created (pool misses).
        reuses: acquisitions served from the free lists (pool hits).
        destroys: native handles destroyed (over the cap, ``trim``, ``clear``).
        cached: handles in the free lists now.
        live: handles acquired and not yet released now.
        high_water: the most handles live at once since creation or :meth:`EventPool.reset_stats`.
    """

    creates: int
    reuses: int
    destroys: int
    cached: int
    live: int
    high_water: int


class _Counts:
    """One device's counts; ``total`` is the pool's over all devices (live and high only)."""

    __slots__ = ("creates", "reuses", "destroys", "live", "high", "total")

    def __init__(self, total: "_Counts | None" = None):
        self.creates = self.reuses = self.destroys = self.live = self.high = 0
        self.total = total

    def hand_out(self, n: int) -> None:
        """``n`` more handles live, here and in the total; the high-water marks follow."""
        live = self.live = self.live + n
        if live > self.high:
            self.high = live
        t = self.total
        live = t.live = t.live + n
        if live > t.high:
            t.high = live


class _Key:
    """One (device, flags) key: its LIFO free list and its device's counts."""

    __slots__ = ("free", "counts")

    def __init__(self, counts: _Counts):
        self.free: list = []
        self.counts = counts


_MISS = object()  # acquire(): no cached handle


class EventPool:
    """Recycles native CUDA event handles, keyed by ``(device ordinal, flags)``.

    Safe to use from any number of threads at once: one lock guards the free lists and the
    counts; native creation and destruction run outside it. Finalizers never take that lock
    (the garbage collector may run them inside it): they hand their handles back with
    :meth:`release_deferred`, and every other method applies such returns first, so the
    statistics stay exact. Handles come back in LIFO order,
    so the most recently used (warmest) one is reused first. Releasing a handle whose record
    is still pending is fine: CUDA lets an event be recorded again, and waits already
    enqueued keep the state they captured.

    Args:
        max_cached: cap on cached handles per key; a release beyond it destroys the handle.
            ``None`` means no cap, ``0`` switches recycling off.
        create: ``create(device, flags) -> handle`` (default: ``cuEventCreate`` in the
            device's primary context). For tests and custom handle types.
        destroy: ``destroy(handle)`` (default: ``cuEventDestroy``).
    """

    __slots__ = ("_max_cached", "_create", "_destroy", "_lock", "_keys", "_counts", "_total", "_returned",
                 "_state", "__weakref__")

    def __init__(self, max_cached: int | None = None, *, create=None, destroy=None):
        if max_cached is not None and (isinstance(max_cached, bool) or not isinstance(max_cached, int)):
            raise TypeError(f"max_cached must be None or an int, got {type(max_cached).__name__}")
        if max_cached is not None and max_cached < 0:
            raise ValueError(f"max_cached must be None (no cap) or >= 0, got {max_cached}")
        if (create is None) != (destroy is None):
            raise TypeError("give both create= and destroy=, or neither")
        self._max_cached = max_cached
        self._create = create or driver.event_create
        self._destroy = destroy or driver.event_destroy
        self._lock = compiled.new_lock()
        self._keys: dict[tuple[int, int], _Key] = {}
        self._counts: dict[int, _Counts] = {}  # per device
        self._total = _Counts()  # live/high over all devices
        # (device, flags, handle) that finalizers gave back without the lock (release_deferred),
        # applied by the next call: deque appends and pops are atomic under the GIL
        self._returned: collections.deque = collections.deque()
        self._state = state  # bound early: read by releases during interpreter exit
        _pools.add(self)

    @property
    def max_cached(self) -> int | None:
        """The cap on cached handles per key (``None``: no cap)."""
        return self._max_cached

    def __repr__(self) -> str:
        s = self.stats()
        return f"<EventPool max_cached={self._max_cached} live={s.live} cached={s.cached} creates={s.creates}>"

    def acquire(self, device: int, flags: int):
        """A handle for ``(device, flags)``: a cached one if any, else a new native one."""
        lock = self._lock
        lock.acquire()
        try:
            # the returns finalizers handed over, in this lock round: an acquire right after
            # an event was dropped is the common case
            doomed = self._take_returned() if self._returned else None
            key = self._keys.get((device, flags))
            if key is not None and key.free:
                c = key.counts
                c.reuses += 1
                c.hand_out(1)
                if doomed is None:
                    return key.free.pop()
                handle = key.free.pop()
            else:
                handle = _MISS
        finally:
            lock.release()
        if doomed:
            self._destroy_quietly(doomed)
        return self._create_counted(device, flags) if handle is _MISS else handle

    def acquire_many(self, device: int, flags: int, n: int) -> list:
        """``n`` handles for ``(device, flags)`` at once (one lock round instead of ``n``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"acquire_many() needs a count n >= 1, got {n!r}")
        lock = self._lock
        lock.acquire()
        try:
            doomed = self._take_returned() if self._returned else None  # as in acquire()
            key = self._keys.get((device, flags))
            free = key.free if key is not None else None
            take = min(n, len(free)) if free else 0
            if take:
                c = key.counts
                c.reuses += take
                c.hand_out(take)
                handles = free[-take:]
                del free[-take:]
            else:
                handles = []
        finally:
            lock.release()
        if doomed:
            self._destroy_quietly(doomed)
        try:
            while len(handles) < n:
                handles.append(self._create_counted(device, flags))
        except BaseException:
            self.release_many(device, flags, handles)
            if take:  # handed back, not handed out: they were no reuse
                with self._lock:
                    key.counts.reuses -= take
            raise
        return handles

    def _create_counted(self, device: int, flags: int):
        handle = self._create(device, flags)
        with self._lock:
            c = self._counts.get(device)
            if c is None:
                c = self._counts[device] = _Counts(self._total)
            if (device, flags) not in self._keys:
                self._keys[(device, flags)] = _Key(c)
            c.creates += 1
            c.hand_out(1)
        return handle

    def release(self, device: int, flags: int, handle) -> None:
        """Give back a handle obtained from :meth:`acquire` with the same key."""
        if self._returned:
            self._drain()
        lock = self._lock
        lock.acquire()
        try:
            key = self._keys.get((device, flags))
            if key is None:
                raise self._unknown_key(device, flags)
            c = key.counts
            c.live -= 1
            self._total.live -= 1
            cap = self._max_cached
            if cap is None or len(key.free) < cap or self._state.exiting:
                key.free.append(handle)
                return
            c.destroys += 1
        finally:
            lock.release()
        self._destroy(handle)

    def release_many(self, device: int, flags: int, handles: list) -> None:
        """Give back several handles of one key at once (one lock round instead of many)."""
        if self._returned:
            self._drain()
        n = len(handles)
        if not n:
            return
        doomed = ()
        lock = self._lock
        lock.acquire()
        try:
            key = self._keys.get((device, flags))
            if key is None:
                raise self._unknown_key(device, flags)
            c = key.counts
            c.live -= n
            self._total.live -= n
            cap = self._max_cached
            if cap is None or self._state.exiting:
                key.free.extend(handles)
            else:
                room = max(cap - len(key.free), 0)
                key.free.extend(handles[:room])
                doomed = handles[room:]
                c.destroys += len(doomed)
        finally:
            lock.release()
        for handle in doomed:
            self._destroy(handle)

    def release_deferred(self, device: int, flags: int, handle) -> None:
        """Give back a handle from a finalizer, without taking the pool's lock: the garbage
        collector may run a finalizer in a thread that holds it.

        Lock-free (one deque append). The next call of :meth:`acquire`, :meth:`acquire_many`,
        :meth:`release`, :meth:`release_many`, :meth:`trim`, :meth:`clear`, :meth:`stats` or
        :meth:`reset_stats` applies the return first (inside its own lock round, except the
        releases, which apply it just before theirs), so nothing is lost and the statistics
        stay exact; until then the handle counts as live."""
        self._returned.append((device, flags, handle))

    def release_many_deferred(self, device: int, flags: int, handles) -> None:
        """:meth:`release_deferred` for several handles of one key."""
        self._returned.extend([(device, flags, h) for h in handles])

    def _drain(self) -> None:
        """Apply the returns of :meth:`release_deferred`, as :meth:`release` would."""
        with self._lock:
            doomed = self._take_returned()
        if doomed:
            self._destroy_quietly(doomed)

    def _take_returned(self) -> list | None:
        """With the lock held: count and cache the returns of :meth:`release_deferred` (a
        finalizer may add more meanwhile: they are taken too); returns the handles beyond the
        cap, for the caller to destroy once it has released the lock."""
        keys, total = self._keys, self._total
        cap = None if self._state.exiting else self._max_cached
        doomed = None
        for device, flags, handle in drain(self._returned):
            key = keys.get((device, flags))
            if key is None:  # never ours: nothing to count
                continue
            c = key.counts
            c.live -= 1
            total.live -= 1
            if cap is None or len(key.free) < cap:
                key.free.append(handle)
            else:
                c.destroys += 1
                if doomed is None:
                    doomed = []
                doomed.append(handle)
        return doomed

    def _destroy_quietly(self, doomed: list) -> None:
        # the finalizers that handed these over would have swallowed the errors: so does the
        # caller that happens to apply their returns, which did not cause them
        for handle in doomed:
            try:
                self._destroy(handle)
            except Exception:
                pass

    @staticmethod
    def _unknown_key(device: int, flags: int) -> ValueError:
        return ValueError(f"release() of a handle for (device={device}, flags={flags}) that this pool never gave out")

    def trim(self, keep: int = 0) -> int:
        """Destroy cached handles beyond ``keep`` per key; returns how many were destroyed."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be an int >= 0, got {keep!r}")
        doomed = []
        with self._lock:
            late = self._take_returned() if self._returned else None  # (None while exiting)
            if self._state.exiting:
                return 0
            for key in self._keys.values():
                free = key.free
                if len(free) > keep:
                    # the oldest handles sit at the bottom of the LIFO lists
                    extra = free[: len(free) - keep]
                    del free[: len(free) - keep]
                    key.counts.destroys += len(extra)
                    doomed.extend(extra)
        if late:  # returns beyond the cap: destroyed as their release would have
            self._destroy_quietly(late)
        for handle in doomed:
            self._destroy(handle)
        return len(doomed)

    def clear(self) -> None:
        """Destroy every cached handle and reset the statistics (live handles stay counted)."""
        self.trim(0)
        self.reset_stats()

    def stats(self, device: int | None = None) -> PoolStats:
        """Exact :class:`PoolStats` for ``device`` (an ordinal or Device), or for all devices."""
        with self._lock:
            doomed = self._take_returned() if self._returned else None
            if device is None:
                counts = list(self._counts.values())
                cached = sum(len(k.free) for k in self._keys.values())
                live, high = self._total.live, self._total.high
            else:
                device = int(device)
                c = self._counts.get(device)
                counts = [c] if c is not None else []
                cached = sum(len(k.free) for (d, _), k in self._keys.items() if d == device)
                live = c.live if c is not None else 0
                high = c.high if c is not None else 0
            result = PoolStats(
                creates=sum(c.creates for c in counts),
                reuses=sum(c.reuses for c in counts),
                destroys=sum(c.destroys for c in counts),
                cached=cached,
                live=live,
                high_water=high,
            )
        if doomed:
            self._destroy_quietly(doomed)
        return result

    def reset_stats(self) -> None:
        """Zero the creates/reuses/destroys counts and restart the high-water mark at ``live``."""
        with self._lock:
            doomed = self._take_returned() if self._returned else None
            for c in (*self._counts.values(), self._total):
                c.creates = c.reuses = c.destroys = 0
                c.high = c.live
        if doomed:
            self._destroy_quietly(doomed)


compiled.register(EventPool, ("acquire", "release"),
                  lambda hot, cls, python: hot.install_pool(cls, _Key, _Counts, python))

_default: EventPool | None = None
_default_lock = threading.Lock()
_pools: weakref.WeakSet = weakref.WeakSet()


@after_fork_in_child
def _after_fork_in_child() -> None:
    # Another thread of the parent may have held a pool's lock at the fork; that thread does
    # not exist here, so the lock would never be released. (The handles are the parent's:
    # a CUDA-initialized child counts as exiting, so they are leaked, never destroyed.)
    global _default_lock
    _default_lock = threading.Lock()
    for pool in list(_pools):
        pool._lock = compiled.new_lock()



def default_pool() -> EventPool:
    """The process-wide pool that events use unless given another one.

    Its cap comes from ``CUDAEVENTS_POOL_MAX_CACHED`` (unset: no cap).
    """
    global _default
    pool = _default
    if pool is None:
        with _default_lock:
            if _default is None:
                _default = EventPool(env.pool_max_cached())
            pool = _default
    return pool
