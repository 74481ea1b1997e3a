#!/usr/bin/env python3
"""The stress suite of cudaevents: a seeded, random mix of the whole public API from several
threads at once, on data whose final values prove ordering (tests/reliability/test_stress.py
runs it in a subprocess with a hard timeout).

    python tests/scripts/stress.py --seed N [--seconds S] [--threads T] [--mode cpu|sim|gpu]
        [--backend mem64|mem32|hostfn|host] [--stall S] [--skip OP,...] [--only OP,...]

Modes:

- ``cpu`` (CI; no GPU: the script hides any, counters on the host backend): CPU streams,
  AtomicEvent, Event, Fence, Worker committing on CPU streams, Timer regions on CPU streams,
  every wait policy, objects dropped in reference cycles (and collected at random points, with
  low collector thresholds, so finalizers run inside the library's critical sections), closes
  racing waits and signals, errors travelling from a failed CPU task, deliberate misuse, and an
  EventPool of stand-in handles.
- ``gpu`` (device 0 of a real GPU): all of that on the device's counter backend (``--backend``
  or ``CUDAEVENTS_ATOMIC_BACKEND``, default the library's choice), plus GpuStreams created and
  destroyed (the driver reuses destroyed streams' handles), CudaEvents of every flag set from
  private EventPools and the default pool, counters, value events, fences, Worker commits and
  Timer regions on GPU streams, benchmark(), streams held behind gates, closes with signals
  still pending; ordering is proven with device memory (memsets, copies to pinned memory).
- ``sim``: the ``gpu`` mix on a simulated GPU (tests/helpers/stress_sim.py: streams run
  asynchronously, in stream order, a little behind the host; destroyed streams' handles are
  handed out again), counters on a GPU backend (default ``mem64``). It checks the GPU half of
  this script, and the library's GPU paths, on a machine without a GPU.

How ordering is proven: producers put item k (a word in a set, a block of device memory filled
with k, a word of pinned memory) before they signal value k; a consumer that waits for v (on the
host, a CpuStream, a GPU stream, through a Worker commit, a Timer region, a bridging Event) then
checks that every item up to v is there. Seeing v without the data is a reordering. Fence
updates mark their number on the stream just before the update; a wait for n requires the marks
1..n. Counter values read by a thread must never go down. Worker tasks run exactly once and in
each thread's commit order, after the stream work committed before them. Timer regions on CPU
streams last at least the sleep inside them, and every region ended is in the results.

Misuse must raise the documented exception class (exactly that class): anything else raised,
or nothing, is a failure. At the end everything is closed and accounted for: private pools show
live == 0 and creates == destroys + cached (in ``sim`` the driver's live events match the
pools' books), every worker task ran once, no library thread is left alive, every deferred
check ran.

Reproducible: each thread draws from ``random.Random(f"{seed}:{thread}")`` (thread scheduling is
not replayed, so a race may need a few runs of its seed). On a failure the script prints the
seed, the thread, the error, the last operations of every thread and a replay command line, and
exits 1. A watchdog turns a thread that makes no progress for ``--stall`` seconds into exit 3
with every thread's stack (and ``faulthandler.dump_traceback_later`` bounds the whole run), so
a hang is never silent. Every blocking wait in here has a timeout.

On success the last line is ``STRESS-SUMMARY {json}``: seed, seconds, operations per kind,
misuse caught, outcomes of races, pool statistics.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import faulthandler
import gc
import itertools
import json
import logging
import os
import random
import sys
import threading
import time
import traceback
import weakref

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
if TESTS not in sys.path:  # for helpers (cudaevents itself: installed, or on PYTHONPATH)
    sys.path.insert(0, TESTS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="cudaevents stress suite (see the module docstring)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0, help="how long the random mix runs")
    p.add_argument("--threads", type=int, default=8, help="worker threads (besides the producer)")
    p.add_argument("--mode", choices=("cpu", "sim", "gpu"), default="cpu")
    p.add_argument("--backend", choices=("auto", "mem64", "mem32", "hostfn", "host"), default=None,
                   help="counter backend (default: CUDAEVENTS_ATOMIC_BACKEND, else per mode)")
    p.add_argument("--stall", type=float, default=None,
                   help="seconds without progress of a thread that count as a hang (default 30, gpu 60)")
    p.add_argument("--log-size", type=int, default=25, help="operations kept per thread for the report")
    p.add_argument("--skip", default="", help="comma-separated operations to leave out")
    p.add_argument("--only", default="", help="comma-separated operations to run (and no others)")
    p.add_argument("--list-ops", action="store_true", help="list the operations of the mode and exit")
    p.add_argument("--self-test-fail", action="store_true", help="inject an ordering failure (checks the report)")
    p.add_argument("--self-test-hang", action="store_true", help="inject a hang (checks the watchdog)")
    return p.parse_args(argv)


ARGS = parse_args()
GPU = ARGS.mode in ("sim", "gpu")
SIM = ARGS.mode == "sim"


def _resolve_backend():
    given = ARGS.backend or os.environ.get("CUDAEVENTS_ATOMIC_BACKEND", "").strip() or None
    if ARGS.mode == "cpu":
        if given not in (None, "auto", "host"):
            sys.exit(f"stress.py: --mode cpu runs counters on the host backend only, not {given}")
        return "host"
    if ARGS.mode == "sim":
        return "mem64" if given in (None, "auto") else given
    return None if given in (None, "auto") else given


BACKEND = _resolve_backend()
if BACKEND is None:
    os.environ.pop("CUDAEVENTS_ATOMIC_BACKEND", None)
else:
    os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = BACKEND
if ARGS.mode == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, also on a machine that has one
STALL = ARGS.stall if ARGS.stall is not None else (60.0 if ARGS.mode == "gpu" else 30.0)
WAIT = {"cpu": 10.0, "sim": 15.0, "gpu": 20.0}[ARGS.mode]  # for what must come: longer is a failure

import cudaevents as ce  # noqa: E402  (after the environment is set)
from cudaevents import (  # noqa: E402
    AtomicEvent,
    ClosedError,
    CpuStream,
    CudaEvent,
    CudaUnavailableError,
    DeviceMismatchError,
    Event,
    EventPool,
    Fence,
    GpuStream,
    NotReadyError,
    NotRecordedError,
    Timer,
    WaitPolicy,
    Worker,
)
from cudaevents._core import compiled, driver  # noqa: E402

SIMULATOR = None
if SIM:
    from helpers import stress_sim  # noqa: E402

    SIMULATOR = stress_sim.install(seed=ARGS.seed)

T0 = time.monotonic()


def clock() -> float:
    return time.monotonic() - T0


# -- failures, the op log, the watchdog -------------------------------------------------------------
class Failure(Exception):
    """A check found the library wrong: an ordering, accounting or misuse violation."""

    def __init__(self, msg, *, stacks=False):
        super().__init__(msg)
        self.stacks = stacks


class InjectedError(Exception):
    """Raised on purpose by a task, to check that errors travel (and nothing else matches it)."""


class Run:
    def __init__(self):
        self.stop = threading.Event()  # no new operations
        self.failed = threading.Event()
        self.failures: list[dict] = []  # appended without a lock: fail() may run anywhere
        self.actors: list[Actor] = []
        self.outcomes = collections.Counter()  # races' outcomes seen by stream/worker threads
        self.logs = collections.Counter()
        self.unexpected_logs: list[str] = []


RUN = Run()
_tls = threading.local()


def current_actor():
    return getattr(_tls, "actor", None)


def fail(msg, *, exc=None, stacks=False) -> None:
    """Record a failure (the first one is reported) and stop the run. Takes no lock."""
    actor = current_actor()
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc is not None else ""
    RUN.failures.append({"msg": str(msg), "thread": threading.current_thread().name,
                         "actor": actor.name if actor else None, "op": actor.current if actor else None,
                         "at": clock(), "traceback": tb, "stacks": stacks or getattr(exc, "stacks", False)})
    RUN.failed.set()


class Actor:
    """A thread of the mix: its random source, its op log (a ring buffer) and its heartbeat."""

    def __init__(self, name, index):
        self.name, self.index = name, index
        self.rng = random.Random(f"{ARGS.seed}:{name}")
        self.log = collections.deque(maxlen=ARGS.log_size)
        self.n = 0
        self.beat = time.monotonic()
        self.current = None
        self.watched = True
        self.ops = collections.Counter()
        self.misuse = collections.Counter()
        self.outcomes = collections.Counter()
        self.seen: dict = {}
        self.deferred = collections.deque()
        self.held_handles: list = []
        self.wseq = collections.Counter()
        self.timer = None
        RUN.actors.append(self)

    def note(self, text) -> None:
        self.log.append(f"{clock():9.4f} {text}")

    def begin(self, op) -> None:
        self.n += 1
        self.current = op
        self.beat = time.monotonic()
        self.note(f"#{self.n} {op}")

    def end(self) -> None:
        self.ops[self.current] += 1
        self.current = None
        self.beat = time.monotonic()

    def tick(self) -> None:
        self.beat = time.monotonic()

    def where(self) -> str:
        return f"{self.name}#{self.n} {self.current}"

    def observe(self, key, value, what) -> None:
        """Values of one counter read by one thread never go down."""
        last = self.seen.get(key, 0)
        if value < last:
            raise Failure(f"ORDERING: {what} went back from {last} to {value} (read by {self.name})")
        self.seen[key] = value


def replay_line() -> str:
    parts = [f"cd {ROOT} &&"]
    if BACKEND is not None:
        parts.append(f"CUDAEVENTS_ATOMIC_BACKEND={BACKEND}")
    parts += ["PYTHONPATH=src:tests", "python", os.path.relpath(os.path.abspath(__file__), ROOT),
              f"--seed {ARGS.seed}", f"--seconds {ARGS.seconds:g}", f"--threads {ARGS.threads}", f"--mode {ARGS.mode}"]
    if BACKEND is not None:
        parts.append(f"--backend {BACKEND}")
    if ARGS.stall is not None:
        parts.append(f"--stall {ARGS.stall:g}")
    for flag in ("skip", "only"):
        if getattr(ARGS, flag):
            parts.append(f"--{flag} {getattr(ARGS, flag)}")
    for flag in ("self_test_fail", "self_test_hang"):
        if getattr(ARGS, flag):
            parts.append("--" + flag.replace("_", "-"))
    return " ".join(parts)


def _write(text: str, fd: int = 1) -> None:
    data = text.encode("utf-8", "replace")
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _op_logs() -> str:
    now = time.monotonic()
    out = []
    for a in list(RUN.actors):
        out.append(f"--- last {len(a.log)} operations of {a.name} (now in: {a.current}, "
                   f"last progress {now - a.beat:.2f} s ago) ---")
        out.extend("    " + line for line in list(a.log))
    return "\n".join(out)


def _sim_state() -> str:
    if SIMULATOR is None:
        return ""
    if not SIMULATOR.lock.acquire(timeout=1):
        return "simulated GPU: its lock is held (a thread is stuck inside the simulated driver)\n"
    try:
        busy = [(s.handle, len(s.ops), s.ops[0].kind) for s in [*SIMULATOR._streams.values(), *SIMULATOR._draining]
                if s.ops]
    finally:
        SIMULATOR.lock.release()
    lines = [f"simulated GPU: {len(busy)} stream(s) with work queued; violations: {SIMULATOR.violations[:5]}"]
    lines += [f"    stream {h:#x}: {n} op(s), head {kind}" for h, n, kind in busy[:20]]
    return "\n".join(lines) + "\n"


_reporting = threading.Lock()


def report_and_exit(kind: str, rc: int, detail: str, stacks: bool) -> None:
    if not _reporting.acquire(blocking=False):  # another thread reports (and exits) already
        while True:
            time.sleep(60)
    sys.stdout.flush()
    first = RUN.failures[0] if RUN.failures else None
    who = f"thread {first['thread']} (actor {first['actor']}, op {first['op']})" if first else "-"
    text = [f"\nSTRESS {kind}: seed={ARGS.seed} mode={ARGS.mode} backend={BACKEND or 'auto'} "
            f"threads={ARGS.threads} at {clock():.2f} s; first failure in {who}",
            detail.rstrip(), _sim_state().rstrip(), _op_logs(), f"replay: {replay_line()}", ""]
    _write("\n".join(t for t in text if t) + "\n")
    if stacks:
        _write("\n--- stacks of every thread ---\n", 2)
        faulthandler.dump_traceback(all_threads=True)
    _write(f"STRESS {kind}: seed {ARGS.seed}; replay: {replay_line()}\n")
    os._exit(rc)


def report_failure() -> None:
    first = RUN.failures[0]
    detail = f"{first['msg']}\n{first['traceback']}"
    if len(RUN.failures) > 1:
        detail += f"\n({len(RUN.failures) - 1} more failure(s) after it; the next: {RUN.failures[1]['msg']})"
    report_and_exit("FAILURE", 1, detail, first["stacks"])


def watchdog() -> None:
    while True:
        time.sleep(0.2)
        now = time.monotonic()
        for a in list(RUN.actors):
            if a.watched and now - a.beat > STALL:
                msg = f"HANG: {a.name} made no progress for {now - a.beat:.1f} s (in {a.current})"
                RUN.failures.insert(0, {"msg": msg, "thread": a.thread.name if a.thread else a.name, "actor": a.name,
                                        "op": a.current, "at": clock(), "traceback": "", "stacks": True})
                RUN.failed.set()
                report_and_exit("HANG", 3, msg, True)


class _LogTally(logging.Handler):
    """Counts what the library logs; an error that is not about an injected failure or a close
    is a finding."""

    def emit(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        RUN.logs[f"{record.levelname}: {str(record.msg)[:60]}"] += 1
        if record.levelno >= logging.ERROR and not isinstance(exc, (InjectedError, ClosedError)):
            RUN.unexpected_logs.append(f"{record.getMessage()} ({exc!r})")


def _unraisable(info) -> None:
    # an exception in a finalizer (or elsewhere unraisable): never ignored here
    RUN.failures.append({"msg": f"unraisable exception in {info.object!r}: {info.exc_type.__name__}: "
                                f"{info.exc_value}", "thread": threading.current_thread().name, "actor": None,
                         "op": None, "at": clock(), "stacks": False,
                         "traceback": "".join(traceback.format_exception(info.exc_type, info.exc_value,
                                                                         info.exc_traceback))})
    RUN.failed.set()


def _thread_excepthook(args) -> None:
    fail(f"uncaught {args.exc_type.__name__} in thread {args.thread.name if args.thread else '?'}: {args.exc_value}",
         exc=args.exc_value)


# -- helpers -----------------------------------------------------------------------------------------
POLICIES = ["sleep", "block", None, WaitPolicy(spin=20e-6, yield_for=100e-6, max_sleep=2e-3),
            WaitPolicy(spin=0.0, yield_for=0.0, max_sleep=5e-3, block=True)]
SPIN_POLICIES = ["spin", "yield", WaitPolicy(spin=2e-3, yield_for=2e-3, max_sleep=1e-3)]  # one thread only


def pick_policy(rng, actor=None):
    if actor is not None and actor.index == 0 and rng.random() < 0.3:
        return rng.choice(SPIN_POLICIES)  # spinners share the GIL: only thread w0 spins
    return rng.choice(POLICIES)


def expect(actor, name, exc_type, fn, *args, **kwargs):
    """``fn(*args)`` must raise exactly ``exc_type`` (the documented class)."""
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - inspected
        if type(exc) is not exc_type:
            raise Failure(f"MISUSE {name}: expected {exc_type.__name__}, got {type(exc).__name__}: {exc}") from exc
        actor.misuse[name] += 1
        return exc
    raise Failure(f"MISUSE {name}: expected {exc_type.__name__}, nothing was raised")


def must_come(what, fn, *args, _state=None, **kwargs):
    """A wait for something that must happen: a TimeoutError here is a failure (with stacks).
    ``_state()`` says where the awaited object stands then."""
    try:
        return fn(*args, **kwargs)
    except TimeoutError as exc:
        state = ""
        if _state is not None:
            try:
                state = f"; {_state()}"
            except BaseException as why:  # noqa: BLE001 - only for the message
                state = f"; (its state could not be read: {why!r})"
        raise Failure(f"STUCK: {what} timed out ({exc}); what it waits for was signalled{state}",
                      stacks=True) from exc


def checked(where, fn, *args):
    """Run a check on a stream or worker thread: a Failure there fails the run."""
    try:
        fn(*args)
    except Failure as f:
        fail(f"{f} [{where}]", exc=f)
    except BaseException as exc:  # noqa: BLE001 - any error of a check is a finding
        fail(f"unexpected {type(exc).__name__} in a check on {threading.current_thread().name}: {exc} [{where}]",
             exc=exc)


def raise_injected(err):
    raise err


def inject_hang():
    """--self-test-hang: a deadlock on a lock this thread holds (what a finalizer taking a lock
    its thread is inside of would do); the watchdog must turn it into a failure."""
    lock = threading.Lock()
    lock.acquire()
    lock.acquire(timeout=3600)


class Junk:
    """Holds library objects in a reference cycle (``self.me = self``); dropped unclosed."""


JUNK_STREAMS: set = set()  # weak references to the GpuStreams of junk not yet collected


# -- shared pieces -------------------------------------------------------------------------------------
class Marks:
    """Tokens set by stream tasks; a task that runs after them checks they are set."""

    def __init__(self):
        self._ids = itertools.count(1)
        self.seen: set = set()

    def new(self) -> int:
        return next(self._ids)

    def set(self, mark) -> None:
        self.seen.add(mark)

    def check(self, mark, what) -> None:
        if mark not in self.seen:
            raise Failure(f"ORDERING: {what} ran before the stream work enqueued before it (mark {mark} not set)")


class Ledger:
    """Worker tasks: each runs exactly once, and a thread's tasks on a worker in its order."""

    def __init__(self):
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self.added: dict[int, str] = {}
        self.ran = collections.Counter()
        self.last: dict = {}
        self.injected = collections.Counter()  # worker name -> task errors injected on purpose

    def add(self, actor, w, check=None) -> None:
        wname = w.name
        with self.lock:
            tid = next(self._ids)
            self.added[tid] = f"{actor.where()} on {wname}"
        actor.wseq[wname] += 1
        w.add_task(_ledger_task, self, tid, wname, actor.name, actor.wseq[wname], check)

    def run(self, tid, wname, aname, seq) -> None:
        with self.lock:
            self.ran[tid] += 1
            if self.ran[tid] > 1:
                raise Failure(f"WORKER: task {tid} ({self.added.get(tid)}) ran {self.ran[tid]} times")
            last = self.last.get((wname, aname), 0)
            if seq <= last:
                raise Failure(f"ORDERING: worker {wname} ran task {seq} of {aname} after its task {last}")
            self.last[(wname, aname)] = seq


def _ledger_task(ledger, tid, wname, aname, seq, check) -> None:
    where = f"worker task {tid} of {aname} on {wname}"
    checked(where, ledger.run, tid, wname, aname, seq)
    if check is not None:
        checked(where, check)


class TimerBook:
    """A Timer and what must come out of it: regions per name, the least duration per name."""

    def __init__(self, name, timer):
        self.name, self.timer = name, timer
        self.lock = threading.Lock()
        self.expect = collections.Counter()
        self.min_ms: dict[str, float] = {}

    def ended(self, region, min_ms=0.0) -> None:
        with self.lock:
            self.expect[region] += 1
            self.min_ms[region] = min_ms

    def verify(self) -> int:
        res = must_come(f"Timer {self.name}.results()", self.timer.results, timeout=WAIT)
        got = collections.Counter(s.name for s in res.samples)
        if got != self.expect:
            diff = {k: (got.get(k, 0), self.expect.get(k, 0)) for k in set(got) | set(self.expect)
                    if got.get(k, 0) != self.expect.get(k, 0)}
            raise Failure(f"TIMER {self.name}: regions (found, ended) differ: {diff}")
        for s in res.samples:
            if not s.duration_ms >= self.min_ms.get(s.name, 0.0) - 1e-3:
                raise Failure(f"TIMER {self.name}: region {s.name} lasted {s.duration_ms:.4f} ms, less than the "
                              f"{self.min_ms[s.name]} ms slept inside it (sample {s})")
        return len(res.samples)


class Handles:
    """Stand-in native event handles for an EventPool (CPU mode): which exist, counted."""

    def __init__(self):
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self.alive: set = set()
        self.created = self.destroyed = 0
        self.problems: list[str] = []

    def create(self, device, flags):
        with self.lock:
            h = next(self._ids)
            self.alive.add(h)
            self.created += 1
            return h

    def destroy(self, handle):
        with self.lock:
            if handle not in self.alive:
                self.problems.append(f"handle {handle} destroyed twice or never created")
                return
            self.alive.discard(handle)
            self.destroyed += 1


class PoolBook:
    """A private EventPool and who holds which of its handles (handles taken by the script
    itself; events take theirs through CudaEvent)."""

    def __init__(self, name, cap, fake):
        self.name = name
        self.handles = Handles() if fake else None
        if fake:
            self.pool = EventPool(max_cached=cap, create=self.handles.create, destroy=self.handles.destroy)
        else:
            self.pool = EventPool(max_cached=cap)
        self.lock = threading.Lock()
        self.held: dict = {}

    def took(self, actor, handles) -> None:
        with self.lock:
            for h in handles:
                if h in self.held:
                    raise Failure(f"POOL {self.name}: handle {h} handed to {actor.name} while {self.held[h]} holds it")
                if self.handles is not None and h not in self.handles.alive:
                    raise Failure(f"POOL {self.name}: handle {h} handed out after it was destroyed")
                self.held[h] = actor.name

    def giving(self, actor, handles) -> None:
        with self.lock:
            for h in handles:
                if self.held.pop(h, None) != actor.name:
                    raise Failure(f"POOL {self.name}: {actor.name} gave back handle {h} it did not hold")

    def consistent(self, where) -> None:
        s = self.pool.stats()
        if s.creates - s.destroys != s.cached + s.live or s.live < 0 or s.high_water < s.live:
            raise Failure(f"POOL {self.name}: inconsistent stats {s} ({where})")


# -- CPU chains: items in a set, a counter signalled after them ------------------------------------------------
class CpuChain:
    """Item k is put (on a producer CpuStream, or on the host) before value k is signalled."""

    def __init__(self, name, rng, streams):
        self.name = name
        self.ctr = AtomicEvent(policy=pick_policy(rng))
        self.streams = streams
        self.lock = threading.Lock()
        self.k = 0
        self.have: set = set()
        self.prefix = 0
        self.plock = threading.Lock()

    def check(self, v, where) -> None:
        p = self.prefix
        if v <= p:
            return
        have = self.have
        for i in range(p + 1, v + 1):
            if i not in have:
                raise Failure(f"ORDERING: {where}: {self.name} reached {v} but its item {i} is not there "
                              "(items are put before their value is signalled)")
        with self.plock:
            if v > self.prefix:
                self.prefix = v

    def produce(self, actor, inject=False) -> None:
        rng = actor.rng
        with self.lock:
            if self.k - self.ctr.value > 200:  # bound the backlog of the producer streams
                must_come(f"{self.name} backlog", self.ctr.wait, self.k - 100, timeout=WAIT)
            k = self.k + 1
            r = rng.random()
            if inject:  # --self-test-fail: the signal goes before the item, on purpose
                s = self.streams[0]
                self.ctr.signal(k, s)
                s.enqueue(time.sleep, 0.3)
                s.enqueue(self.have.add, k)
            elif r < 0.75:
                s = rng.choice(self.streams)
                s.enqueue(self.have.add, k)
                self.ctr.signal(k, s)
            elif r < 0.9:
                must_come(f"{self.name} wait({self.k})", self.ctr.wait, self.k, timeout=WAIT,
                          policy=pick_policy(rng, actor))
                self.have.add(k)
                self.ctr.signal(k)
            else:  # a host signal while a stream signal may still be pending: refused, or fine
                self.have.add(k)
                try:
                    self.ctr.signal(k)
                    actor.outcomes["host signal accepted"] += 1
                except ValueError:
                    actor.outcomes["host signal refused (stream signal pending)"] += 1
                    must_come(f"{self.name} wait({self.k})", self.ctr.wait, self.k, timeout=WAIT)
                    self.ctr.signal(k)
            self.k = k

    def host(self, actor) -> None:
        v = self.k
        must_come(f"{self.name}.wait({v})", self.ctr.wait, v, timeout=WAIT, policy=pick_policy(actor.rng, actor),
                  _state=lambda: f"its value is {self.ctr.value}, signalled up to {self.k}")
        self.check(v, f"{actor.where()} host wait")
        actor.observe(self.ctr, self.ctr.value, f"{self.name}'s value")

    def poll(self, actor) -> None:
        v = self.k
        val = self.ctr.value
        actor.observe(self.ctr, val, f"{self.name}'s value")
        self.check(val, f"{actor.where()} value")
        if self.ctr.is_signaled(v):
            self.check(v, f"{actor.where()} is_signaled")

    def stream(self, actor) -> None:
        c = actor.rng.choice(WORLD.consumers)
        v = self.k
        self.ctr.wait(v, c)
        c.enqueue(checked, f"{actor.where()} wait on {c.thread.name}", self.check, v, "CpuStream wait")

    def worker(self, actor) -> None:
        c = actor.rng.choice(WORLD.consumers)
        w = actor.rng.choice(WORLD.workers)
        v = self.k
        self.ctr.wait(v, c)
        WORLD.ledger.add(actor, w, check=lambda: self.check(v, "Worker task committed after a CpuStream wait"))
        w.commit(c)

    def timed(self, actor) -> None:
        c = actor.rng.choice(WORLD.consumers)
        book = actor.rng.choice(WORLD.timers)
        v = self.k
        with book.timer.region("chain-wait", c):
            self.ctr.wait(v, c)
            c.enqueue(checked, f"{actor.where()} timed wait", self.check, v, "CpuStream wait in a Timer region")
        book.ended("chain-wait")

    def bridge(self, actor) -> None:
        """An Event signalled on a CpuStream behind the wait carries the order to the host."""
        c = actor.rng.choice(WORLD.consumers)
        v = self.k
        e = Event()
        self.ctr.wait(v, c)
        e.signal(c)
        must_come("bridging Event.wait()", e.wait, timeout=WAIT, policy=pick_policy(actor.rng, actor))
        self.check(v, f"{actor.where()} Event after a CpuStream wait")
        e.close()


class ValueChain:
    """Value events: item k is put on a stream, then ``ev.value = k; ev.signal(stream)``."""

    def __init__(self, name, rng, streams):
        self.name = name
        self.ev = Event()
        self.streams = streams
        self.lock = threading.Lock()
        self.k = 0
        self.have: set = set()

    def check(self, v, where) -> None:
        for i in range(max(1, v - 64), v + 1):
            if i not in self.have:
                raise Failure(f"ORDERING: {where}: value Event {self.name} reached {v} but its item {i} is not there")

    def produce(self, actor) -> None:
        rng = actor.rng
        with self.lock:
            k = self.k + 1
            if self.k and (rng.random() < 0.15 or k % 128 == 0):  # the host: wait for the last value first
                must_come(f"{self.name}.wait()", self.ev.wait, timeout=WAIT)
                self.have.add(k)
                self.ev.value = k
                self.ev.signal()
            else:
                s = rng.choice(self.streams)
                s.enqueue(self.have.add, k)
                self.ev.value = k
                self.ev.signal(s)
            self.k = k

    def host(self, actor) -> None:
        v = self.k
        if v == 0:
            return
        must_come(f"{self.name}.wait()", self.ev.wait, timeout=WAIT, policy=pick_policy(actor.rng, actor))
        self.check(v, f"{actor.where()} host wait")

    def stream(self, actor) -> None:
        v = self.k
        if v == 0:
            return
        c = actor.rng.choice(WORLD.consumers)
        self.ev.wait(c)
        c.enqueue(checked, f"{actor.where()} Event wait on {c.thread.name}", self.check, v, "CpuStream wait")
        if self.ev.is_signaled():
            self.check(v, f"{actor.where()} is_signaled")


class FenceChain:
    """Update n is marked on its stream just before ``fence.update(stream)``; waiting for the
    updates so far requires every mark."""

    def __init__(self, name, rng, streams, device=None):
        self.name = name
        self.fence = Fence(device, policy=pick_policy(rng))
        self.streams = streams
        self.lock = threading.Lock()
        self.marks: set = set()

    def check(self, n, where) -> None:
        for i in range(max(1, n - 64), n + 1):
            if i not in self.marks:
                raise Failure(f"ORDERING: {where}: fence {self.name} passed update {n} but update {i} had not "
                              "reached its stream's mark")

    def update(self, actor) -> None:
        rng = actor.rng
        with self.lock:
            n = self.fence.count + 1
            if n - self.fence.completed > 200:
                must_come(f"{self.name} backlog", self.fence.wait, timeout=WAIT)
            if rng.random() < 0.8:
                s = rng.choice(self.streams)
                s.enqueue(self.marks.add, n)
                got = self.fence.update(s)
            else:
                self.marks.add(n)
                try:
                    got = self.fence.update()
                    actor.outcomes["fence host update accepted"] += 1
                except ValueError:  # a stream update still pending: a host update would be overtaken
                    actor.outcomes["fence host update refused (stream update pending)"] += 1
                    must_come(f"{self.name}.wait()", self.fence.wait, timeout=WAIT)
                    got = self.fence.update()
            if got != n:
                raise Failure(f"FENCE {self.name}: update() returned {got}, expected {n}")

    def host(self, actor) -> None:
        n = self.fence.count
        must_come(f"{self.name}.wait()", self.fence.wait, timeout=WAIT, policy=pick_policy(actor.rng, actor))
        self.check(n, f"{actor.where()} host wait")
        done = self.fence.completed
        actor.observe(self.fence, done, f"fence {self.name}'s completed count")
        self.check(done, f"{actor.where()} completed")

    def stream(self, actor) -> None:
        n = self.fence.count
        c = actor.rng.choice(WORLD.consumers)
        self.fence.wait(c)
        c.enqueue(checked, f"{actor.where()} fence wait on {c.thread.name}", self.check, n, "CpuStream wait")


# -- closes racing waits ---------------------------------------------------------------------------------
class Racy:
    """A counter, value event or fence that threads signal and wait on while one closes it."""

    SLACK = 0.25  # a close this much before a wait's deadline must wake it (not time it out)

    def __init__(self, kind, rng, serial):
        self.kind = kind
        self.serial = serial
        self.S = CpuStream(f"racy{serial}-signal")
        self.C = CpuStream(f"racy{serial}-wait")
        self.lock = threading.Lock()
        self.top = 0
        self.host_top = 0  # highest value a host signal gave (reached at once)
        self.signals = 0
        self.closing = False
        self.closed_at = None
        self.born = time.monotonic()
        self.obj = {"atomic": lambda: AtomicEvent(policy=pick_policy(rng)), "event": Event,
                    "fence": lambda: Fence(policy=pick_policy(rng))}[kind]()

    def closed_ok(self) -> bool:
        return self.closing

    def signal(self, actor) -> None:
        rng = actor.rng
        host = rng.random() < 0.3
        try:
            with self.lock:
                if self.kind == "atomic":
                    v = self.top + 1
                    self.obj.signal(v, None if host else self.S)
                    self.top = v
                    if host:
                        self.host_top = v
                elif self.kind == "event":
                    v = self.top + 1
                    self.obj.value = v
                    self.obj.signal(None if host else self.S)
                    self.top = v
                    self.signals += 1
                else:
                    self.top = self.obj.update(None if host else self.S)
        except ClosedError:
            if not self.closed_ok():
                raise
            actor.outcomes["racy: signal after close refused"] += 1
        except ValueError:
            if not host:
                raise
            actor.outcomes["racy: host signal refused (stream signal pending)"] += 1

    def wait(self, actor) -> None:
        rng = actor.rng
        timeout = rng.choice([0, 0.002, 0.02, 0.2])
        policy = pick_policy(rng, actor)
        v = rng.randint(1, self.top + 3)
        reached = self.host_top
        signals = self.signals
        t0 = time.monotonic()
        try:
            if self.kind == "atomic":
                self.obj.wait(v, timeout=timeout, policy=policy)
                if not self.obj.is_signaled(v):
                    raise Failure(f"RACY: AtomicEvent.wait({v}) returned but is_signaled({v}) is False")
            else:
                self.obj.wait(timeout=timeout, policy=policy)
            actor.outcomes["racy: wait returned"] += 1
        except ClosedError:
            if not self.obj.closed and not (self.kind == "event" and self.closed_ok()):
                raise Failure(f"RACY: {self.kind} wait raised ClosedError but it is not closed") from None
            if self.kind == "atomic" and self.obj.value >= v:
                raise Failure(f"RACY: wait({v}) raised ClosedError though the value at close, "
                              f"{self.obj.value}, reaches it") from None
            actor.outcomes["racy: wait woke closed"] += 1
        except NotRecordedError:
            if self.kind != "event" or signals:
                raise Failure(f"RACY: NotRecordedError from a {self.kind} signalled {signals} time(s) before") from None
            actor.outcomes["racy: wait on a never-signalled Event"] += 1
        except TimeoutError:
            closed_at = self.closed_at
            if closed_at is not None and closed_at < t0 + timeout - self.SLACK:
                raise Failure(f"RACY: a {self.kind} wait timed out after {timeout} s although the object was "
                              f"closed {t0 + timeout - closed_at:.3f} s before its deadline (a missed wake-up)") from None
            if self.kind == "atomic" and v <= reached:
                raise Failure(f"RACY: AtomicEvent.wait({v}) timed out although a host signal had given "
                              f"{reached} before the wait began") from None
            actor.outcomes["racy: wait timed out"] += 1

    def stream_wait(self, actor) -> None:
        v = actor.rng.randint(1, self.top + 2)
        signals = self.signals
        try:
            if self.kind == "atomic":
                self.obj.wait(v, self.C)
            else:
                self.obj.wait(self.C)
        except ClosedError:
            if not self.closed_ok():
                raise
            actor.outcomes["racy: stream wait refused after close"] += 1
        except NotRecordedError:
            if self.kind != "event" or signals:
                raise
            actor.outcomes["racy: stream wait on a never-signalled Event"] += 1

    def close(self, actor) -> None:
        self.closing = True
        self.obj.close()
        self.closed_at = time.monotonic()
        if not self.obj.closed:
            raise Failure(f"RACY: {self.kind}.close() returned but closed is False")
        if self.kind == "atomic":
            final = self.obj.value
            self.obj.wait(final, timeout=0)  # reached at close: still fine afterwards
            t = time.monotonic()
            expect(actor, "wait-after-close", ClosedError, self.obj.wait, final + 1, timeout=1)
            if time.monotonic() - t > 0.5:
                raise Failure("RACY: a wait on a closed AtomicEvent took more than 0.5 s to refuse")
            expect(actor, "signal-after-close", ClosedError, self.obj.signal, final + 10)
        elif self.kind == "event":
            expect(actor, "event-wait-after-close", ClosedError, self.obj.wait, timeout=1)
            expect(actor, "event-signal-after-close", ClosedError, self.obj.signal)
        else:
            expect(actor, "fence-update-after-close", ClosedError, self.obj.update)
            expect(actor, "fence-wait-after-close", ClosedError, self.obj.wait, timeout=1)

    def retire(self, actor) -> None:
        """After close: the streams finish; a wait on the CPU stream may have failed with
        ClosedError, nothing else."""
        for s, allowed in ((self.S, ()), (self.C, (ClosedError,))):
            try:
                must_come(f"racy stream {s.thread.name}.synchronize()", s.synchronize, timeout=WAIT)
            except allowed:
                actor.outcomes["racy: waiting stream failed with ClosedError"] += 1
            must_come(f"racy stream {s.thread.name}.close()", s.close, timeout=WAIT)


# -- the world -------------------------------------------------------------------------------------------
class World:
    def __init__(self, rng):
        self.consumers = [CpuStream(f"consumer-{i}") for i in range(6)]
        self.marks = Marks()
        self.ledger = Ledger()
        self.workers = [Worker(f"worker-{i}") for i in range(2)]
        self.timers = [TimerBook(f"timer-{i}", Timer(harvest_every=rng.choice([1, 8, 64]))) for i in range(2)]
        self.chains = [CpuChain(f"chain{i}", rng, [CpuStream(f"chain{i}-p{j}") for j in range(2)]) for i in range(3)]
        self.vchains = [ValueChain(f"vchain{i}", rng, [CpuStream(f"vchain{i}-p{j}") for j in range(2)])
                        for i in range(2)]
        self.fences = [FenceChain(f"fence{i}", rng, [CpuStream(f"fence{i}-p{j}") for j in range(2)]) for i in range(2)]
        self.racy_lock = threading.Lock()
        self.racy_serial = itertools.count()
        self.racy = [self.new_racy(rng) for _ in range(4)]
        self.retired: list = []
        self.temp_cpu = threading.BoundedSemaphore(6)  # temporary CpuStreams alive at once (each a thread)
        self.junk_streams = threading.BoundedSemaphore(12)
        self.fake_pools = [PoolBook(f"fake-pool-{cap}", cap, fake=True) for cap in (None, 0, 3)]
        self.pools: list[PoolBook] = []
        self.gates = Gates()
        self.gpu = GpuWorld(rng) if GPU else None

    def new_racy(self, rng) -> Racy:
        return Racy(rng.choice(["atomic", "atomic", "event", "fence"]), rng, next(self.racy_serial))

    def all_producers(self):
        chains = [c.produce for c in self.chains] + [c.produce for c in self.vchains] + [f.update for f in self.fences]
        if self.gpu is not None:
            chains += self.gpu.producers()
        return chains


class Gates:
    """Counters that the gatekeeper thread signals (value 1) from the host when their time
    comes: GPU streams held behind them are released by a thread that makes no driver call and
    never waits for the GPU (with streams held on host values every driver call may block, so
    the releasing thread must need none: the library's rule, README "CPU and GPU
    synchronization")."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending: list = []

    def add(self, delay) -> AtomicEvent:
        a = AtomicEvent(0)
        with self.lock:
            self.pending.append((time.monotonic() + delay, a))
        return a

    def open_due(self, everything=False) -> int:
        now = time.monotonic()
        with self.lock:
            due = [g for g in self.pending if everything or g[0] <= now]
            self.pending = [g for g in self.pending if g not in due]
        for _, a in due:
            try:
                a.signal(1)
            except ClosedError:  # its owner gave up on it (a failure is being reported)
                pass
        return len(due)


WORLD: World = None  # set in main()
WORKER_ACTORS: list = []  # the worker threads' actors (the producer outlives them)


# -- GPU pieces (sim and gpu modes) -------------------------------------------------------------------
# CudaEvent flag sets: every combination CUDA allows (interprocess needs timing off)
FLAG_SETS = [{}, {"timing": True}, {"blocking_sync": True}, {"timing": True, "blocking_sync": True},
             {"interprocess": True}, {"interprocess": True, "blocking_sync": True}]


class Buffers:
    """Pairs of pinned host memory and device memory (``NBYTES`` each) for readbacks."""

    NBYTES = 32 * 1024

    def __init__(self, n):
        self.lock = threading.Lock()
        self.all = [(driver.mem_host_alloc(self.NBYTES), driver.mem_alloc(0, self.NBYTES)) for _ in range(n)]
        self.free = list(self.all)

    def get(self):
        with self.lock:
            return self.free.pop() if self.free else None

    def put(self, pair) -> None:
        with self.lock:
            self.free.append(pair)


def words(address, n):
    return (ctypes.c_uint32 * n).from_address(address)


class GpuChain:
    """Item k fills block k % N of a device ring with k, then value k is signalled, on a GPU
    stream (a chain stream, a temporary one, or through a CpuStream driving a GPU stream); a
    consumer that saw v copies the ring and every block of items in (v - N, v] must hold >= its
    item. The producer waits until item k - N/2 has landed before writing item k, so no block is
    ever overwritten by an older item."""

    N = 32
    WORDS = 256
    BLOCK = 4 * WORDS
    BYTES = N * BLOCK

    def __init__(self, name, rng, gw, kind="counter"):
        self.name = name
        self.kind = kind  # "counter", "fence" or "value": how item k is announced
        if kind == "counter":
            self.ctr = AtomicEvent(0, policy=pick_policy(rng))
        elif kind == "fence":
            self.fence = Fence(0, policy=pick_policy(rng))
        else:
            self.ev = Event(0)
        self.ring = driver.mem_alloc(0, self.BYTES)
        self.streams = [GpuStream(0) for _ in range(2)]
        s = self.streams[0]
        driver.memset_d32_async(self.ring, 0, self.BYTES // 4, s._handle)
        s.synchronize(timeout=WAIT)
        # a CpuStream that drives a GPU stream of its own (counter chains, mem64/mem32 only)
        self.cpu = CpuStream(f"{name}-cpu") if kind == "counter" and gw.mixed else None
        self.cpu_gpu = GpuStream(0) if self.cpu is not None else None
        self.lock = threading.Lock()
        self.k = 0
        self.last_stream = None  # the chain stream of item k (None: temporary or CPU-driven)
        self.temp = kind == "counter"

    # announcing and waiting, per kind
    def _announce(self, k, s) -> None:
        if self.kind == "counter":
            self.ctr.signal(k, s)
        elif self.kind == "fence":
            got = self.fence.update(s)
            if got != k:
                raise Failure(f"FENCE {self.name}: update() returned {got}, expected {k}")
        else:
            self.ev.value = k
            self.ev.signal(s)

    def _host_wait(self, v, policy=None) -> None:
        if self.kind == "counter":
            must_come(f"{self.name}.wait({v})", self.ctr.wait, v, timeout=WAIT, policy=policy,
                      _state=lambda: f"its value is {self.ctr.value}, signalled up to {self.k} (a value that "
                                     "went back means a signal landed out of call order)")
        elif self.kind == "fence":
            must_come(f"{self.name}.wait()", self.fence.wait, timeout=WAIT, policy=policy,
                      _state=lambda: f"completed {self.fence.completed} of {self.fence.count}")
        else:
            must_come(f"{self.name}.wait()", self.ev.wait, timeout=WAIT, policy=policy,
                      _state=lambda: f"value {self.ev.value}, is_signaled {self.ev.is_signaled()}")

    def _stream_wait(self, s) -> int:
        """Make stream ``s`` wait for the chain; returns the value it waits for at least."""
        if self.kind == "counter":
            v = self.k
            self.ctr.wait(v, s)
            return v
        with self.lock:  # the value set and its signal are one step of the producer
            v = self.k
            if self.kind == "fence":
                self.fence.wait(s)
            elif v:
                self.ev.wait(s)
            return v

    def block(self, k) -> int:
        return self.ring + (k % self.N) * self.BLOCK

    def check_ring(self, host, v, where, only=None) -> None:
        w = words(host, self.BYTES // 4)
        items = [only] if only is not None else range(max(1, v - self.N + 1), v + 1)
        for i in items:
            b = (i % self.N) * self.WORDS
            low = min(w[b:b + self.WORDS])
            if low < i:
                raise Failure(f"ORDERING: {where}: {self.name} reached {v} but the block of item {i} holds {low} "
                              f"(< {i}): the data was not there when the consumer passed its wait")

    def produce(self, actor) -> None:
        rng = actor.rng
        gw = WORLD.gpu
        with self.lock:
            k = self.k + 1
            if k > self.N // 2:
                self._host_wait(k - self.N // 2)  # (fence, value: waits for all so far, k - 1)
            r = rng.random()
            if self.cpu is not None and r < 0.12:
                # The CpuStream gives k, and GPU streams wait for it on memory (the next GPU signal's
                # inserted wait, consumers' waits): its thread must make no driver call and never wait
                # for the GPU (a memset it enqueued after such a wait may be serialized behind it, and
                # its driver calls block with streams held), so the item is written and finished here.
                self._drive(k)
                self.cpu.enqueue(time.sleep, rng.random() * 0.001)  # the signal stays pending a while
                self.ctr.signal(k, self.cpu)
                self.last_stream = None
            elif self.temp and r < 0.3 and gw.temp_streams.acquire(blocking=False):
                try:
                    t = GpuStream(0, priority=rng.choice(gw.priorities))
                    driver.memset_d32_async(self.block(k), k, self.WORDS, t._handle)
                    self._announce(k, t)
                    t.close()  # destroyed with its work pending: the next stream may get its handle
                finally:
                    gw.temp_streams.release()
                self.last_stream = None
            else:
                s = rng.choice(self.streams)
                driver.memset_d32_async(self.block(k), k, self.WORDS, s._handle)
                self._announce(k, s)
                self.last_stream = s
            self.k = k

    def _drive(self, k) -> None:  # on the producer, before the CpuStream signal of k is called
        s = self.cpu_gpu
        driver.memset_d32_async(self.block(k), k, self.WORDS, s._handle)
        must_come(f"{self.name}: the CPU-driven item {k}", s.synchronize, timeout=WAIT)

    def gpu_wait(self, actor) -> None:
        """A GPU consumer stream waits, copies the ring to pinned memory; a CudaEvent, an Event,
        a Worker commit or a stream synchronize says when the copy is there."""
        gw = WORLD.gpu
        rng = actor.rng
        pair = gw.buffers.get()
        if pair is None:
            actor.outcomes["gpu: no free buffer"] += 1
            return
        host, _ = pair
        ctypes.memset(host, 0, self.BYTES)
        q = rng.choice(gw.consumers)
        v = self._stream_wait(q)
        if v == 0:
            gw.buffers.put(pair)
            return
        driver.memcpy_dtoh_async(host, self.ring, self.BYTES, q._handle)
        where = f"{actor.where()} GPU wait on a consumer stream"
        how = rng.random()
        if how < 0.4:
            book = rng.choice(gw.pools + [None])
            ev = CudaEvent(pool=None if book is None else book.pool, **rng.choice(FLAG_SETS)).record(q)

            def done():
                try:
                    must_come("CudaEvent.synchronize() after a readback", ev.synchronize, timeout=WAIT)
                    self.check_ring(host, v, where + " (CudaEvent)")
                finally:
                    ev.close()
                    gw.buffers.put(pair)

            actor.deferred.append(done)
        elif how < 0.6:
            e = Event()
            e.signal(q)
            policy = pick_policy(rng, actor)

            def done():
                try:
                    must_come("Event.wait() after a readback", e.wait, timeout=WAIT, policy=policy)
                    self.check_ring(host, v, where + " (Event)")
                finally:
                    e.close()
                    gw.buffers.put(pair)

            actor.deferred.append(done)
        elif how < 0.85:
            w = rng.choice(WORLD.workers)

            def task():
                try:
                    self.check_ring(host, v, where + " (Worker task after the readback)")
                finally:
                    gw.buffers.put(pair)

            WORLD.ledger.add(actor, w, check=task)
            w.commit(q)
        else:
            try:
                must_come("GpuStream.synchronize() after a readback", q.synchronize, timeout=WAIT)
                self.check_ring(host, v, where + " (stream synchronize)")
            finally:
                gw.buffers.put(pair)

    def host(self, actor) -> None:
        """The host waits, then reads the ring with a synchronous copy."""
        v = self.k
        if v == 0:
            return
        pair = WORLD.gpu.buffers.get()
        if pair is None:
            return
        try:
            self._host_wait(v, pick_policy(actor.rng, actor))
            driver.memcpy_dtoh(0, pair[0], self.ring, self.BYTES)
            self.check_ring(pair[0], v, f"{actor.where()} host wait")
            if self.kind == "counter":
                actor.observe(self.ctr, self.ctr.value, f"{self.name}'s value")
        finally:
            WORLD.gpu.buffers.put(pair)

    def cpu_wait(self, actor) -> None:
        """A CpuStream waits, then its task reads the ring with a synchronous copy."""
        if self.kind != "counter":
            return
        v = self.k
        if v == 0:
            return
        pair = WORLD.gpu.buffers.get()
        if pair is None:
            return
        c = actor.rng.choice(WORLD.consumers)
        self.ctr.wait(v, c)
        where = f"{actor.where()} CpuStream wait on {c.thread.name}"

        def task():
            try:
                driver.memcpy_dtoh(0, pair[0], self.ring, self.BYTES)
                self.check_ring(pair[0], v, where)
            finally:
                WORLD.gpu.buffers.put(pair)

        c.enqueue(checked, where, task)

    def cross_event(self, actor) -> None:
        """A CudaEvent recorded on the producer stream of item v, waited on by a consumer stream."""
        gw = WORLD.gpu
        rng = actor.rng
        pair = gw.buffers.get()
        if pair is None:
            return
        host = pair[0]
        ctypes.memset(host, 0, self.BYTES)
        q = rng.choice(gw.consumers)
        book = rng.choice(gw.pools + [None])
        with self.lock:
            v, s = self.k, self.last_stream
            if v == 0 or s is None:
                gw.buffers.put(pair)
                return
            ev = CudaEvent(pool=None if book is None else book.pool,
                           **rng.choice([f for f in FLAG_SETS if not f.get("timing")] + [{"timing": True}])).record(s)
        ev.wait(q)
        ev.close()  # back to the pool while the wait is pending: fine, the wait captured the record
        driver.memcpy_dtoh_async(host, self.ring, self.BYTES, q._handle)
        done_ev = CudaEvent(pool=None if book is None else book.pool).record(q)
        where = f"{actor.where()} CudaEvent from the producer stream"

        def done():
            try:
                must_come("CudaEvent.synchronize()", done_ev.synchronize, timeout=WAIT)
                self.check_ring(host, v, where, only=v)
            finally:
                done_ev.close()
                gw.buffers.put(pair)

        actor.deferred.append(done)

    def final_check(self) -> None:
        v = self.k
        if v:
            self._host_wait(v)
        host = driver.mem_host_alloc(self.BYTES)
        try:
            driver.memcpy_dtoh(0, host, self.ring, self.BYTES)
            self.check_ring(host, v, "the end of the run")
        finally:
            driver.mem_host_free(host)
        if self.kind == "counter" and self.ctr.value != v:
            raise Failure(f"COUNTER {self.name}: value {self.ctr.value} at the end, signalled {v} last")
        if self.kind == "fence" and (self.fence.completed != v or self.fence.count != v):
            raise Failure(f"FENCE {self.name}: completed {self.fence.completed}, count {self.fence.count}, "
                          f"updated {v} times")


class HostToGpuChain:
    """Item k is word k % N of pinned memory, written by a CpuStream (or the host) before value
    k is signalled there; a GPU stream waits, copies the words to the device and back, and
    every word of items in (v - N, v] must hold >= its item."""

    N = 64

    def __init__(self, name, rng):
        self.name = name
        self.ctr = AtomicEvent(0, policy=pick_policy(rng))
        self.address = driver.mem_host_alloc(4 * self.N)
        self.w = words(self.address, self.N)
        for i in range(self.N):
            self.w[i] = 0
        self.streams = [CpuStream(f"{name}-p{j}") for j in range(2)]
        self.lock = threading.Lock()
        self.k = 0

    def put(self, k) -> None:
        self.w[k % self.N] = k

    def produce(self, actor) -> None:
        rng = actor.rng
        with self.lock:
            k = self.k + 1
            if k > self.N // 2:
                must_come(f"{self.name}.wait()", self.ctr.wait, k - self.N // 2, timeout=WAIT)
            if rng.random() < 0.8:
                s = rng.choice(self.streams)
                s.enqueue(self.put, k)
                self.ctr.signal(k, s)
            else:
                must_come(f"{self.name}.wait()", self.ctr.wait, self.k, timeout=WAIT)
                self.put(k)
                self.ctr.signal(k)
            self.k = k

    def check(self, host, v, where) -> None:
        w = words(host, self.N)
        for i in range(max(1, v - self.N + 1), v + 1):
            if w[i % self.N] < i:
                raise Failure(f"ORDERING: {where}: {self.name} reached {v} but the word of item {i} read "
                              f"{w[i % self.N]} on the GPU")

    def gpu_wait(self, actor) -> None:
        gw = WORLD.gpu
        pair = gw.buffers.get()
        if pair is None:
            return
        host, dev = pair
        ctypes.memset(host, 0, 4 * self.N)
        q = actor.rng.choice(gw.consumers)
        v = self.k
        self.ctr.wait(v, q)  # a value a CpuStream (or the host) gives: on hostfn, a host function waits
        driver.memcpy_htod_async(dev, self.address, 4 * self.N, q._handle)
        driver.memcpy_dtoh_async(host, dev, 4 * self.N, q._handle)
        ev = CudaEvent().record(q)
        where = f"{actor.where()} GPU wait for a CpuStream's value"

        def done():
            try:
                must_come("CudaEvent.synchronize()", ev.synchronize, timeout=WAIT)
                self.check(host, v, where)
            finally:
                ev.close()
                gw.buffers.put(pair)

        actor.deferred.append(done)


class GpuWorld:
    def __init__(self, rng):
        ce.Device(0).make_current()
        self.backend = AtomicEvent(0).backend
        self.mixed = self.backend in ("mem64", "mem32")  # CPU-driven GPU producers on one counter
        self.priorities = sorted(set([0, driver.stream_priority_range(0)[0]]))
        warm_up()
        self.consumers = [GpuStream(0) for _ in range(6)]
        self.buffers = Buffers(96)
        self.temp_streams = threading.BoundedSemaphore(6)  # temporary GpuStreams alive at once
        self.pools = [PoolBook(f"pool-{cap}", cap, fake=False) for cap in (None, 0, 4)]
        self.chains = [GpuChain(f"gchain{i}", rng, self) for i in range(2)]
        self.fchain = GpuChain("gfence", rng, self, kind="fence")
        self.vchain = GpuChain("gvalue", rng, self, kind="value")
        self.h2g = HostToGpuChain("h2g", rng)
        self.timers = [TimerBook(f"gpu-timer-{i}", Timer(pool=self.pools[i].pool if i < 2 else None,
                                                         harvest_every=rng.choice([1, 8, 64]),
                                                         timeline=bool(i % 2)))
                       for i in range(3)]
        self.scratch = driver.mem_alloc(0, 1 << 16)

    def all_chains(self):
        return [*self.chains, self.fchain, self.vchain]

    def second_device_stream(self):
        s = getattr(self, "_second", None)
        if s is None:
            s = self._second = GpuStream(1)
        return s

    def producers(self):
        return [c.produce for c in self.all_chains()] + [self.h2g.produce]


def warm_up() -> None:
    """Every kind of GPU operation once, before anything builds "not finished yet" states."""
    s, s2 = GpuStream(0), GpuStream(0)
    dev = driver.mem_alloc(0, 4096)
    host = driver.mem_host_alloc(4096)
    driver.memset_d32_async(dev, 7, 1024, s._handle)
    driver.memcpy_dtod_async(dev + 2048, dev, 2048, s._handle)
    driver.memcpy_dtoh_async(host, dev, 4096, s._handle)
    driver.memcpy_htod_async(dev, host, 4096, s._handle)
    ev = CudaEvent(timing=True).record(s)
    ev.wait(s2)
    a = AtomicEvent(0)
    a.signal(1, s)
    a.wait(1, s2)
    b = AtomicEvent(0)
    b.wait(1, s2)  # a value the host gives (on hostfn: a host function waits)
    releaser = threading.Timer(0.05, b.signal, (1,))  # another thread gives it
    releaser.start()
    end = CudaEvent(timing=True).record(s2)
    end.synchronize(timeout=WAIT)
    releaser.join(WAIT)
    s.synchronize(timeout=WAIT)
    ev.elapsed_time(end)
    if words(host, 1)[0] != 7:
        raise Failure(f"warm-up: the readback holds {words(host, 1)[0]}, not 7")
    for x in (ev, end, a, b, s, s2):
        x.close()
    driver.mem_free(dev)
    driver.mem_host_free(host)


# -- the operations ----------------------------------------------------------------------------------------
class Op:
    def __init__(self, name, fn, weight, modes):
        self.name, self.fn, self.weight, self.modes = name, fn, weight, modes


OPS: list[Op] = []
OP_NAMES: set = set()
ALL = ("cpu", "sim", "gpu")
GPU_MODES = ("sim", "gpu")


def op(name, weight, modes=ALL):
    def register(fn):
        OPS.append(Op(name, fn, weight, modes))
        return fn

    return register


@op("chain_produce", 6)
def _chain_produce(actor):
    actor.rng.choice(WORLD.all_producers())(actor)


@op("chain_host_wait", 5)
def _chain_host(actor):
    actor.rng.choice(WORLD.chains).host(actor)


@op("chain_poll", 3)
def _chain_poll(actor):
    actor.rng.choice(WORLD.chains).poll(actor)


@op("chain_stream_wait", 5)
def _chain_stream(actor):
    actor.rng.choice(WORLD.chains).stream(actor)


@op("chain_worker", 3)
def _chain_worker(actor):
    actor.rng.choice(WORLD.chains).worker(actor)


@op("chain_timer", 2)
def _chain_timer(actor):
    actor.rng.choice(WORLD.chains).timed(actor)


@op("chain_event_bridge", 2)
def _chain_bridge(actor):
    actor.rng.choice(WORLD.chains).bridge(actor)


@op("value_event_host_wait", 3)
def _value_host(actor):
    actor.rng.choice(WORLD.vchains).host(actor)


@op("value_event_stream_wait", 3)
def _value_stream(actor):
    actor.rng.choice(WORLD.vchains).stream(actor)


@op("fence_update", 3)
def _fence_update(actor):
    actor.rng.choice(WORLD.fences).update(actor)


@op("fence_host_wait", 3)
def _fence_host(actor):
    actor.rng.choice(WORLD.fences).host(actor)


@op("fence_stream_wait", 3)
def _fence_stream(actor):
    actor.rng.choice(WORLD.fences).stream(actor)


@op("worker_commit", 4)
def _worker_commit(actor):
    rng = actor.rng
    w = rng.choice(WORLD.workers)
    s = rng.choice(WORLD.consumers)
    mark = WORLD.marks.new()
    s.enqueue(WORLD.marks.set, mark)
    for _ in range(rng.randint(1, 3)):
        WORLD.ledger.add(actor, w, check=lambda: WORLD.marks.check(mark, "a Worker task committed on a CpuStream"))
    w.commit(s)


@op("worker_add_uncommitted", 1)
def _worker_add(actor):
    # left for this thread's next commit, or close(), to hand over (no stream to check against)
    WORLD.ledger.add(actor, actor.rng.choice(WORLD.workers))


@op("worker_synchronize", 1)
def _worker_sync(actor):
    w = actor.rng.choice(WORLD.workers)
    must_come(f"{w.name}.synchronize()", w.synchronize, timeout=WAIT)


@op("worker_task_error", 1)
def _worker_error(actor):
    w = actor.rng.choice(WORLD.workers)
    with WORLD.ledger.lock:
        WORLD.ledger.injected[w.name] += 1
    w.add_task(raise_injected, InjectedError(f"worker task of {actor.where()}"))
    w.commit(actor.rng.choice(WORLD.consumers))


SLEEPS_US = [0, 200, 1000, 2000]


@op("timer_regions", 3)
def _timer_regions(actor):
    rng = actor.rng
    if actor.timer is None:
        actor.timer = TimerBook(f"timer-of-{actor.name}", Timer(harvest_every=rng.choice([1, 4, 64])))
        WORLD.timers.append(actor.timer)
    book = rng.choice(WORLD.timers[:2] + [actor.timer])
    timer = book.timer
    s = rng.choice(WORLD.consumers)
    d1, d2 = rng.choice(SLEEPS_US), rng.choice(SLEEPS_US)
    how = rng.random()
    if how < 0.4:
        with timer.region(f"sleep{d1}", s):
            s.enqueue(time.sleep, d1 / 1e6)
        book.ended(f"sleep{d1}", d1 / 1000)
    elif how < 0.6:  # nested: the outer region holds both sleeps
        with timer.region(f"outer{d1 + d2}", s):
            with timer.region(f"sleep{d1}", s):
                s.enqueue(time.sleep, d1 / 1e6)
            s.enqueue(time.sleep, d2 / 1e6)
        book.ended(f"sleep{d1}", d1 / 1000)
        book.ended(f"outer{d1 + d2}", (d1 + d2) / 1000)
    elif how < 0.7:
        token = timer.begin(f"sleep{d1}", s)
        s.enqueue(time.sleep, d1 / 1e6)
        timer.end(token)
        book.ended(f"sleep{d1}", d1 / 1000)
        expect(actor, "timer-end-twice", ValueError, timer.end, token)
    elif how < 0.78:  # laps: each phase holds its sleep
        with timer.laps(s) as lap:
            lap(f"lap{d1}")
            s.enqueue(time.sleep, d1 / 1e6)
            lap(f"lap{d2}")
            s.enqueue(time.sleep, d2 / 1e6)
        book.ended(f"lap{d1}", d1 / 1000)
        book.ended(f"lap{d2}", d2 / 1000)
        expect(actor, "laps-after-the-block", ValueError, lap, "late")
    elif how < 0.85:
        token = timer.begin("discarded", s)
        timer.discard(token)
        timer.discard(token)  # twice: does nothing
    else:
        before = book.timer.collected
        snap = timer.snapshot()
        if len(snap) < before:
            raise Failure(f"TIMER {book.name}: snapshot has {len(snap)} samples, {before} were collected before")
        timer.harvest()


@op("cpu_stream_churn", 2)
def _stream_churn(actor):
    rng = actor.rng
    if not WORLD.temp_cpu.acquire(blocking=False):
        return
    try:
        s = CpuStream(f"temp-{actor.name}")
        got = []
        n = rng.randint(1, 20)
        for i in range(n):
            s.enqueue(got.append, i)
        how = rng.random()
        if how < 0.4:
            must_come("temporary CpuStream.synchronize()", s.synchronize, timeout=WAIT)
            if got != list(range(n)):
                raise Failure(f"ORDERING: a CpuStream ran its tasks as {got}")
            s.close(timeout=WAIT)
        elif how < 0.7:
            must_come("temporary CpuStream.close()", s.close, timeout=WAIT)  # the queued tasks finish first
            if got != list(range(n)):
                raise Failure(f"ORDERING: a closed CpuStream ran {got} of {n} tasks")
            expect(actor, "enqueue-after-close", ClosedError, s.enqueue, print)
        else:
            del s  # dropped with tasks queued: they still run, then its thread ends
    finally:
        WORLD.temp_cpu.release()


@op("junk_cycle", 3)
def _junk(actor):
    """Objects in a reference cycle, used a little and dropped without closing: the collector
    runs their finalizers wherever it happens to be (at random, and often: low thresholds)."""
    rng = actor.rng
    j = Junk()
    j.me = j
    if WORLD.junk_streams.acquire(blocking=False):
        j.release = WORLD.junk_streams
        j.s = CpuStream(f"junk-{actor.name}")
        j.a = AtomicEvent(policy=pick_policy(rng))
        j.a.signal(1, j.s)
        if rng.random() < 0.5:
            must_come("junk counter wait", j.a.wait, 1, timeout=WAIT)
        j.e = Event()
        j.e.signal(j.s)
        j.f = Fence()
        j.f.update(j.s)
        if rng.random() < 0.5:
            j.t = Timer()
            with j.t.region("junk", j.s):
                j.s.enqueue(time.sleep, 0)
        j.s.enqueue(j.release.release)  # the slot is free once its tasks ran (the thread ends soon after)
    if rng.random() < 0.4:
        j.w = Worker(f"junk-worker-{actor.name}-{actor.n}")
        WORLD.ledger.add(actor, j.w)  # uncommitted: the finalizer (or close at exit) hands it over
    if rng.random() < 0.3:
        j.plain = [AtomicEvent(), Event(), Fence()]
        j.plain[1].signal()
        j.plain[2].update()
    if GPU and rng.random() < 0.6 and len(JUNK_STREAMS) < 12:  # a bound on the streams waiting for the collector
        gw = WORLD.gpu
        book = rng.choice(gw.pools)
        j.gs = GpuStream(0)
        JUNK_STREAMS.add(weakref.ref(j.gs, JUNK_STREAMS.discard))  # lock-free: runs inside the collector
        j.ev = CudaEvent(pool=book.pool, **rng.choice(FLAG_SETS)).record(j.gs)
        j.ga = AtomicEvent(0)
        j.ga.signal(1, j.gs)
        if rng.random() < 0.5:
            j.ge = Event()
            j.ge.signal(j.gs)
        if rng.random() < 0.3:
            j.gt = Timer(pool=book.pool)
            with j.gt.region("junk", j.gs):
                driver.memset_d32_async(gw.scratch, 1, 64, j.gs._handle)
    del j
    if rng.random() < 0.3:
        gc.collect(rng.randint(0, 2))


@op("gc_collect", 1)
def _gc(actor):
    gc.collect(actor.rng.randint(0, 2))


@op("racy_signal", 4)
def _racy_signal(actor):
    actor.rng.choice(WORLD.racy).signal(actor)


@op("racy_wait", 5)
def _racy_wait(actor):
    actor.rng.choice(WORLD.racy).wait(actor)


@op("racy_stream_wait", 2)
def _racy_stream_wait(actor):
    actor.rng.choice(WORLD.racy).stream_wait(actor)


@op("racy_close", 2)
def _racy_close(actor):
    rng = actor.rng
    with WORLD.racy_lock:
        oldest = min(range(len(WORLD.racy)), key=lambda i: WORLD.racy[i].born)
        i = oldest if time.monotonic() - WORLD.racy[oldest].born > 1.0 else rng.randrange(len(WORLD.racy))
        old = WORLD.racy[i]
        WORLD.racy[i] = WORLD.new_racy(rng)
    old.close(actor)
    old.retire(actor)


@op("poison", 1)
def _poison(actor):
    """A CpuStream task raises: what the stream signals afterwards carries that error to every
    waiter (host, another CpuStream, which passes it on), and a Worker commit behind it still runs."""
    p, c = CpuStream(f"poison-{actor.name}"), CpuStream(f"poisoned-{actor.name}")
    gate = threading.Event()  # holds the failure back until the waits below are enqueued
    try:
        err = InjectedError(f"poison of {actor.where()}")
        a, e, f = AtomicEvent(), Event(), Fence()
        p.enqueue(gate.wait, WAIT)
        p.enqueue(raise_injected, err)
        a.signal(1, p)
        e.signal(p)
        f.update(p)
        w = actor.rng.choice(WORLD.workers)
        WORLD.ledger.add(actor, w)
        w.commit(p)  # behind the failed task: its tasks still run
        a.wait(1, c)  # c fails with err ...
        e2 = Event()
        e2.signal(c)  # ... and passes it on
        gate.set()
        policy = pick_policy(actor.rng, actor)
        for what, call in (("AtomicEvent.wait", lambda: a.wait(1, timeout=WAIT, policy=policy)),
                           ("Event.wait", lambda: e.wait(timeout=WAIT, policy=policy)),
                           ("Fence.wait", lambda: f.wait(timeout=WAIT, policy=policy)),
                           ("the failed CpuStream's synchronize", lambda: p.synchronize(timeout=WAIT)),
                           ("the waiting CpuStream's synchronize", lambda: c.synchronize(timeout=WAIT)),
                           ("Event.wait on what the waiting stream signalled", lambda: e2.wait(timeout=WAIT))):
            try:
                must_come(what, call)
            except InjectedError as got:
                if got is not err:
                    raise Failure(f"ERRORS: {what} raised another InjectedError: {got}") from None
                actor.misuse["error-travels"] += 1
            else:
                raise Failure(f"ERRORS: {what} returned although the producer's task raised")
        if a.error is not err:
            raise Failure(f"ERRORS: the counter's error is {a.error!r}")
        for x in (a, e, f, e2):
            x.close()
        expect(actor, "wait-on-failed-counter", InjectedError, a.wait, 1, c)  # raises at once now
    finally:
        gate.set()
        p.close(timeout=WAIT)
        c.close(timeout=WAIT)


@op("gated_timeouts", 1)
def _gated(actor):
    """Waits on what a gated CpuStream will give raise TimeoutError, then complete."""
    gate = threading.Event()
    g = CpuStream(f"gated-{actor.name}")
    w = Worker(f"gated-worker-{actor.name}")
    t = Timer()
    try:
        g.enqueue(gate.wait, WAIT)
        a, e, f = AtomicEvent(), Event(), Fence()
        a.signal(1, g)
        e.signal(g)
        f.update(g)
        mark = WORLD.marks.new()
        g.enqueue(WORLD.marks.set, mark)
        WORLD.ledger.add(actor, w, check=lambda: WORLD.marks.check(mark, "a Worker task behind a gated CpuStream"))
        w.commit(g)
        with t.region("gated", g):
            pass
        to = actor.rng.choice([0, 0.001, 0.01])
        expect(actor, "timeout-cpu-stream", TimeoutError, g.synchronize, timeout=to)
        expect(actor, "timeout-atomic", TimeoutError, a.wait, 1, timeout=to, policy=pick_policy(actor.rng, actor))
        expect(actor, "timeout-event", TimeoutError, e.wait, timeout=to)
        expect(actor, "timeout-fence", TimeoutError, f.wait, timeout=to)
        expect(actor, "timeout-worker", TimeoutError, w.synchronize, timeout=to)
        expect(actor, "timeout-timer", TimeoutError, t.results, timeout=to)
        expect(actor, "host-signal-overtaken", ValueError, a.signal, 2)  # 1 is pending on g
        expect(actor, "signal-lower", ValueError, a.signal, 0, g)
        gate.set()
        must_come("gated AtomicEvent.wait", a.wait, 1, timeout=WAIT)
        must_come("gated Event.wait", e.wait, timeout=WAIT)
        must_come("gated Fence.wait", f.wait, timeout=WAIT)
        must_come("gated Worker.synchronize", w.synchronize, timeout=WAIT)
        if len(must_come("gated Timer.results", t.results, timeout=WAIT)) != 1:
            raise Failure("TIMER: the gated region is missing")
        a.signal(2)
        for x in (a, e, f):
            x.close()
    finally:
        gate.set()
        g.close(timeout=WAIT)
        w.close(timeout=WAIT)


@op("misuse", 4)
def _misuse(actor):
    for _ in range(actor.rng.randint(1, 3)):
        name, case = actor.rng.choice(MISUSE)
        case(actor, name)


def _recording(box: list, fn, expected):
    """A task that calls ``fn()`` and puts in ``box`` "raised" (``expected`` was raised),
    "returned", or the other exception."""

    def task():
        try:
            fn()
        except expected:
            box.append("raised")
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            box.append(exc)
        else:
            box.append("returned")

    return task


def _m_sync_own_task(actor, name):
    s = actor.rng.choice(WORLD.consumers)
    box = []
    s.enqueue(_recording(box, lambda: s.synchronize(timeout=1), RuntimeError))
    must_come("CpuStream.synchronize()", s.synchronize, timeout=WAIT)
    if box != ["raised"]:
        raise Failure(f"MISUSE {name}: CpuStream.synchronize() from its own task gave {box}, not RuntimeError")
    actor.misuse[name] += 1


def _m_worker_sync_own_task(actor, name):
    w = Worker(f"misuse-worker-{actor.name}")
    box = []
    w.add_task(_recording(box, lambda: w.synchronize(timeout=1), RuntimeError))
    w.close(timeout=WAIT)
    if box != ["raised"]:
        raise Failure(f"MISUSE {name}: Worker.synchronize() from its own task gave {box}, not RuntimeError")
    actor.misuse[name] += 1


def _closed_atomic():
    a = AtomicEvent()
    a.signal(3)
    a.close()
    return a


def _signalled_atomic(v=5):
    a = AtomicEvent()
    a.signal(v)
    return a


def _closed_cpu():
    s = CpuStream()
    s.close(timeout=WAIT)
    return s


def _closed_worker():
    w = Worker()
    w.close(timeout=WAIT)
    return w


def _closed(obj):
    obj.close()
    return obj


def _simple(exc, make, call):
    """A misuse case: ``call(make())`` must raise ``exc``; ``make``'s object is closed after."""

    def case(actor, name):
        obj = make() if make is not None else None
        try:
            expect(actor, name, exc, call, obj)
        finally:
            if obj is not None and hasattr(obj, "close") and not isinstance(obj, (CpuStream, Worker)):
                obj.close()

    return case


MISUSE = [
    ("signal-lower", _simple(ValueError, _signalled_atomic, lambda a: a.signal(3))),
    ("signal-negative", _simple(ValueError, AtomicEvent, lambda a: a.signal(-1))),
    ("signal-bool", _simple(TypeError, AtomicEvent, lambda a: a.signal(True))),
    ("signal-float", _simple(TypeError, AtomicEvent, lambda a: a.signal(1.0))),
    ("signal-2**63", _simple(ValueError, AtomicEvent, lambda a: a.signal(1 << 63))),
    ("signal-non-stream", _simple(TypeError, AtomicEvent, lambda a: a.signal(1, "stream"))),
    ("wait-negative-timeout", _simple(ValueError, AtomicEvent, lambda a: a.wait(1, timeout=-1))),
    ("wait-str-timeout", _simple(TypeError, AtomicEvent, lambda a: a.wait(1, timeout="1"))),
    ("wait-times-out", _simple(TimeoutError, AtomicEvent, lambda a: a.wait(1, timeout=0.002))),
    ("wait-unknown-policy", _simple(ValueError, AtomicEvent, lambda a: a.wait(0, timeout=1, policy="fast"))),
    ("wait-stream-timeout", _simple(TypeError, AtomicEvent, lambda a: a.wait(1, WORLD.consumers[0], timeout=1))),
    ("wait-stream-policy", _simple(TypeError, AtomicEvent, lambda a: a.wait(1, WORLD.consumers[0], policy="spin"))),
    ("closed-signal", _simple(ClosedError, _closed_atomic, lambda a: a.signal(4))),
    ("closed-wait-unreached", _simple(ClosedError, _closed_atomic, lambda a: a.wait(4, timeout=1))),
    ("closed-stream-wait-unreached", _simple(ClosedError, _closed_atomic, lambda a: a.wait(4, WORLD.consumers[0]))),
    ("policy-negative", _simple(ValueError, None, lambda _: WaitPolicy(spin=-1.0))),
    ("policy-zero-sleep", _simple(ValueError, None, lambda _: WaitPolicy(max_sleep=0))),
    ("enqueue-closed", _simple(ClosedError, _closed_cpu, lambda s: s.enqueue(print))),
    ("enqueue-non-callable", _simple(TypeError, None, lambda _: WORLD.consumers[0].enqueue(42))),
    ("cpu-sync-negative-timeout", _simple(ValueError, None, lambda _: WORLD.consumers[0].synchronize(timeout=-1))),
    ("sync-own-task", _m_sync_own_task),
    ("worker-non-callable", _simple(TypeError, None, lambda _: WORLD.workers[0].add_task("print"))),
    ("worker-commit-non-stream", _simple(TypeError, None, lambda _: WORLD.workers[0].commit(object()))),
    ("worker-closed", _simple(ClosedError, _closed_worker, lambda w: w.add_task(print))),
    ("worker-name", _simple(TypeError, None, lambda _: Worker(name=5))),
    ("worker-sync-own-task", _m_worker_sync_own_task),
    ("event-never-signalled", _simple(NotRecordedError, Event, lambda e: e.wait(timeout=1))),
    ("event-never-signalled-stream", _simple(NotRecordedError, Event, lambda e: e.wait(WORLD.consumers[0]))),
    ("event-value-zero", _simple(ValueError, None, lambda _: Event(value=0))),
    ("event-value-type", _simple(TypeError, None, lambda _: Event(value=1.5))),
    ("event-value-decrease", _simple(ValueError, lambda: Event(value=3), lambda e: setattr(e, "value", 2))),
    ("event-closed-signal", _simple(ClosedError, lambda: _closed(Event()), lambda e: e.signal())),
    ("event-non-stream", _simple(TypeError, Event, lambda e: e.signal("stream"))),
    ("fence-closed", _simple(ClosedError, lambda: _closed(Fence()), lambda f: f.update())),
    ("fence-non-stream", _simple(TypeError, Fence, lambda f: f.update(3.5))),
    ("cuda-event-query-unrecorded", _simple(NotRecordedError, CudaEvent, lambda e: e.query())),
    ("cuda-event-wait-unrecorded", _simple(NotRecordedError, CudaEvent, lambda e: e.wait())),
    ("cuda-event-sync-unrecorded", _simple(NotRecordedError, CudaEvent, lambda e: e.synchronize(timeout=1))),
    ("cuda-event-elapsed-unrecorded", _simple(NotRecordedError, lambda: CudaEvent(timing=True),
                                              lambda e: e.elapsed_time(CudaEvent(timing=True)))),
    ("cuda-event-elapsed-untimed", _simple(ValueError, CudaEvent, lambda e: e.elapsed_time(CudaEvent(timing=True)))),
    ("cuda-event-elapsed-non-event", _simple(TypeError, lambda: CudaEvent(timing=True), lambda e: e.elapsed_time(1.0))),
    ("cuda-event-elapsed-closed", _simple(ClosedError, lambda: CudaEvent(timing=True),
                                          lambda e: e.elapsed_time(_closed(CudaEvent(timing=True))))),
    ("cuda-event-timing-interprocess", _simple(ValueError, None, lambda _: CudaEvent(timing=True, interprocess=True))),
    ("cuda-event-record-cpu-stream", _simple(TypeError, CudaEvent, lambda e: e.record(WORLD.consumers[0]))),
    ("as-stream-bool", _simple(TypeError, None, lambda _: ce.as_stream(True))),
    ("as-stream-object", _simple(TypeError, None, lambda _: ce.as_stream(object()))),
    ("as-stream-raw-without-device", _simple(TypeError, None, lambda _: ce.as_stream(12345))),
    ("as-stream-negative", _simple(ValueError, None, lambda _: ce.as_stream(-1, device=0))),
    ("pool-negative-cap", _simple(ValueError, None, lambda _: EventPool(max_cached=-1))),
    ("pool-cap-type", _simple(TypeError, None, lambda _: EventPool(max_cached=1.5))),
    ("pool-unknown-key", _simple(ValueError, None, lambda _: EventPool().release(0, 0, 1))),
    ("pool-acquire-many-0", _simple(ValueError, None, lambda _: EventPool().acquire_many(0, 0, 0))),
    ("pool-trim-negative", _simple(ValueError, None, lambda _: EventPool().trim(-1))),
    ("timer-name-type", _simple(TypeError, Timer, lambda t: t.region(5, WORLD.consumers[0]))),
    ("timer-harvest-every", _simple(ValueError, None, lambda _: Timer(harvest_every=0))),
    ("timer-end-non-token", _simple(TypeError, Timer, lambda t: t.end("token"))),
    ("timer-end-foreign", _simple(ValueError, Timer, lambda t: Timer().end(t.begin("x", WORLD.consumers[0])))),
    ("benchmark-non-callable", _simple(TypeError, None, lambda _: ce.benchmark(42))),
    ("benchmark-repeat-0", _simple(ValueError, None, lambda _: ce.benchmark(lambda: None, repeat=0))),
    ("benchmark-warmup-type", _simple(TypeError, None, lambda _: ce.benchmark(lambda: None, warmup=1.5))),
]
if not GPU:  # without a GPU, these report what is missing
    MISUSE += [
        ("no-gpu-device", _simple(CudaUnavailableError, None, lambda _: ce.Device(0))),
        ("no-gpu-stream", _simple(CudaUnavailableError, None, lambda _: GpuStream())),
        ("no-gpu-counter", _simple(CudaUnavailableError, None, lambda _: AtomicEvent(0))),
    ]


@op("pool_churn", 3)
def _pool_churn(actor):
    """Stand-in handles through private pools (caps None, 0, 3) from every thread: none handed
    out twice or after its destruction, stats consistent at every look."""
    rng = actor.rng
    for _ in range(rng.randint(1, 4)):
        if actor.held_handles and (rng.random() < 0.5 or len(actor.held_handles) > 12):
            book, key, hs = actor.held_handles.pop(rng.randrange(len(actor.held_handles)))
            book.giving(actor, hs)
            if len(hs) == 1 and rng.random() < 0.5:
                book.pool.release(*key, hs[0])
            else:
                book.pool.release_many(*key, hs)
        else:
            book = rng.choice(WORLD.fake_pools)
            key = (rng.randint(0, 1), rng.choice([0, 2, 3, 6]))
            n = rng.randint(1, 4)
            hs = [book.pool.acquire(*key)] if n == 1 else book.pool.acquire_many(*key, n)
            book.took(actor, hs)
            actor.held_handles.append((book, key, hs))
        if rng.random() < 0.2:
            book = rng.choice(WORLD.fake_pools)
            if rng.random() < 0.3:
                book.pool.trim(rng.randint(0, 2))
            book.consistent(actor.where())


# GPU operations ---------------------------------------------------------------------------------------
@op("gpu_chain_gpu_wait", 6, GPU_MODES)
def _gpu_chain_gpu(actor):
    actor.rng.choice(WORLD.gpu.all_chains()).gpu_wait(actor)


@op("gpu_chain_host_wait", 3, GPU_MODES)
def _gpu_chain_host(actor):
    actor.rng.choice(WORLD.gpu.all_chains()).host(actor)


@op("gpu_chain_cpu_wait", 3, GPU_MODES)
def _gpu_chain_cpu(actor):
    actor.rng.choice(WORLD.gpu.chains).cpu_wait(actor)


@op("gpu_chain_cross_event", 2, GPU_MODES)
def _gpu_chain_cross(actor):
    actor.rng.choice(WORLD.gpu.chains).cross_event(actor)


@op("host_to_gpu_wait", 3, GPU_MODES)
def _h2g(actor):
    WORLD.gpu.h2g.gpu_wait(actor)


@op("cuda_event_churn", 4, GPU_MODES)
def _cuda_event_churn(actor):
    """Events of every flag set from private pools and the default pool: record, query, wait,
    synchronize(timeout), elapsed_time; closed, dropped, or dropped in a cycle."""
    rng = actor.rng
    gw = WORLD.gpu
    book = rng.choice(gw.pools + [None])
    pool = None if book is None else book.pool
    flags = rng.choice(FLAG_SETS)
    ev = CudaEvent(rng.choice([None, 0]), pool=pool, **flags)
    if rng.random() < 0.2:
        expect(actor, "cuda-event-query-unrecorded", NotRecordedError, ev.query)
    s = rng.choice(gw.consumers)
    ev.record(s)
    ev.query()
    other = rng.choice(gw.consumers)
    ev.wait(other)
    end = None
    if flags.get("timing"):
        driver.memset_d32_async(gw.scratch, actor.n & 0xFFFF, 1024, s._handle)
        end = CudaEvent(0, timing=True, pool=pool).record(s)
        must_come("CudaEvent.synchronize()", end.synchronize, timeout=WAIT)
        ms = ev.elapsed_time(end)
        if not ms >= 0.0:
            raise Failure(f"TIMING: elapsed_time between two events of one stream is {ms} ms")
    elif rng.random() < 0.5:
        must_come("CudaEvent.synchronize()", ev.synchronize, timeout=WAIT)
        if not ev.query():
            raise Failure("EVENT: query() is False after synchronize() returned")
    if rng.random() < 0.5:
        ev.record(other)  # recorded again: replaces what it captured
    how = rng.random()
    if how < 0.6:
        ev.close()
        if end is not None:
            end.close()
        expect(actor, "cuda-event-closed-record", ClosedError, ev.record, s)
    elif how < 0.8:
        j = Junk()
        j.me, j.ev, j.end = j, ev, end  # a cycle: the collector hands the handles back
    # else: dropped, the finalizer hands the handle back at once


@op("gpu_stream_churn", 3, GPU_MODES)
def _gpu_stream_churn(actor):
    """Streams created and destroyed while counters and events use them (handles come back)."""
    rng = actor.rng
    gw = WORLD.gpu
    if not gw.temp_streams.acquire(blocking=False):
        return
    try:
        s = GpuStream(0, priority=rng.choice(gw.priorities), blocking=rng.random() < 0.2)
        a = AtomicEvent(0)
        driver.memset_d32_async(gw.scratch, 3, 1024, s._handle)
        a.signal(1, s)
        q = rng.choice(gw.consumers)
        a.wait(1, q)
        ev = CudaEvent(pool=rng.choice(gw.pools).pool).record(s)
        if rng.random() < 0.5:
            must_come("GpuStream.synchronize()", s.synchronize, timeout=WAIT)
            if not s.query():
                raise Failure("STREAM: query() is False after synchronize() returned")
        s.close()
        expect(actor, "gpu-stream-closed-sync", ClosedError, s.synchronize, timeout=1)
        expect(actor, "gpu-stream-closed-record", ClosedError, CudaEvent().record, s)
        must_come("counter wait after its stream was destroyed", a.wait, 1, timeout=WAIT)
        if rng.random() < 0.5:
            ev.close()  # else dropped: its finalizer hands the handle back
        a.close()
    finally:
        gw.temp_streams.release()


@op("gpu_timer_regions", 3, GPU_MODES)
def _gpu_timer(actor):
    rng = actor.rng
    gw = WORLD.gpu
    book = rng.choice(gw.timers)
    s = rng.choice(gw.consumers)
    how = rng.random()
    if how < 0.55:
        with book.timer.region("memset", s):
            driver.memset_d32_async(gw.scratch, 5, rng.choice([16, 1024, 16384]), s._handle)
        book.ended("memset")
    elif how < 0.7:  # laps: one shared event between two phases
        with book.timer.laps(s) as lap:
            for phase in ("lap-a", "lap-b", "lap-c")[:rng.randint(1, 3)]:
                lap(phase)
                driver.memset_d32_async(gw.scratch, 7, 1024, s._handle)
                book.ended(phase)
    elif how < 0.85:  # regions that meet, as LayerTimer's backward makes them; some discarded
        outer = book.timer.begin("meet-outer", s)
        inner = book.timer.begin("meet-inner", s)
        driver.memset_d32_async(gw.scratch, 8, 1024, s._handle)
        nxt, other = book.timer._meet([inner, outer], ["meet-next", "meet-other"], s)
        driver.memset_d32_async(gw.scratch, 9, 1024, s._handle)
        book.timer.end(nxt)
        if rng.random() < 0.5:
            book.timer.discard(other)
        else:
            book.timer.end(other)
            book.ended("meet-other")
        for name in ("meet-inner", "meet-outer", "meet-next"):
            book.ended(name)
    else:
        with book.timer.region("outer", s):
            with book.timer.region("inner", s):
                driver.memset_d32_async(gw.scratch, 6, 1024, s._handle)
        book.ended("inner")
        book.ended("outer")
    if rng.random() < 0.1:
        book.timer.harvest()


@op("gpu_worker_commit", 2, GPU_MODES)
def _gpu_worker(actor):
    """Tasks committed behind a copy on a GPU stream see the copy's data."""
    gw = WORLD.gpu
    rng = actor.rng
    pair = gw.buffers.get()
    if pair is None:
        return
    host, dev = pair
    value = 1 + actor.n % 1000000
    words(host, 1)[0] = 0
    s = rng.choice(gw.consumers)
    driver.memset_d32_async(dev, value, 256, s._handle)
    driver.memcpy_dtoh_async(host, dev, 1024, s._handle)
    w = rng.choice(WORLD.workers)

    def task():
        try:
            got = min(words(host, 256))
            if got != value:
                raise Failure(f"ORDERING: a Worker task committed after a copy read {got}, not {value}")
        finally:
            gw.buffers.put(pair)

    WORLD.ledger.add(actor, w, check=task)
    w.commit(s)


@op("gpu_event_fresh", 2, GPU_MODES)
def _gpu_event_fresh(actor):
    """A fresh value Event signalled on one GPU stream (a recycled CudaEvent), waited on by
    another, which then copies what the first wrote."""
    gw = WORLD.gpu
    rng = actor.rng
    pair = gw.buffers.get()
    if pair is None:
        return
    host, dev = pair
    value = 7 + actor.n % 1000000
    words(host, 1)[0] = 0
    s1, s2 = rng.sample(gw.consumers, 2)
    driver.memset_d32_async(dev, value, 256, s1._handle)
    e = Event()
    e.signal(s1)
    e.wait(s2)
    driver.memcpy_dtoh_async(host, dev, 1024, s2._handle)
    done = CudaEvent().record(s2)

    def finish():
        try:
            must_come("CudaEvent.synchronize()", done.synchronize, timeout=WAIT)
            got = min(words(host, 256))
            if got != value:
                raise Failure(f"ORDERING: a stream waiting on an Event read {got}, not {value}")
        finally:
            done.close()
            e.close()
            gw.buffers.put(pair)

    actor.deferred.append(finish)


@op("gpu_event_carry", 1, GPU_MODES)
def _gpu_event_carry(actor):
    """An Event first signalled on a GPU stream (CUDA-event backed), then on a CpuStream or the
    host with a higher value: waiting for that value (via the CpuStream) still orders the GPU
    work before the first signal."""
    gw = WORLD.gpu
    rng = actor.rng
    pair = gw.buffers.get()
    if pair is None:
        return
    host, dev = pair
    value = 11 + actor.n % 1000000
    s = rng.choice(gw.consumers)
    driver.memset_d32_async(dev, value, 256, s._handle)
    e = Event()
    e.signal(s)
    e.value = 2
    try:
        if rng.random() < 0.5:
            c = rng.choice(WORLD.consumers)
            e.signal(c)
            must_come("Event.wait() after a CpuStream signal", e.wait, timeout=WAIT)
            driver.memcpy_dtoh(0, host, dev, 1024)
            got = min(words(host, 256))
            if got != value:
                raise Failure(f"ORDERING: an Event signalled on a GPU stream, then on a CpuStream, passed "
                              f"before the GPU work (read {got}, not {value})")
        else:
            e.signal()  # the host: the value holds at once
            must_come("Event.wait() after a host signal", e.wait, timeout=WAIT)
    finally:
        must_come("GpuStream.synchronize()", s.synchronize, timeout=WAIT)
        e.close()
        gw.buffers.put(pair)


@op("gpu_gated", 2, GPU_MODES)
def _gpu_gated(actor):
    """A GPU stream held behind a gate the producer opens later: its events are not ready,
    elapsed_time raises NotReadyError, synchronize(timeout) raises TimeoutError; then all
    complete."""
    gw = WORLD.gpu
    rng = actor.rng
    if not gw.temp_streams.acquire(blocking=False):
        return
    try:
        gate = WORLD.gates.add(rng.uniform(0.02, 0.08))
        t = GpuStream(0)
        book = rng.choice(gw.pools)
        gate.wait(1, t)
        start = CudaEvent(timing=True, pool=book.pool).record(t)
        driver.memset_d32_async(gw.scratch, 9, 256, t._handle)
        end = CudaEvent(timing=True, pool=book.pool).record(t)
        done = end.query()
        if done and not gate.is_signaled(1):
            raise Failure("ORDERING: an event behind a closed gate completed")
        try:
            ms = start.elapsed_time(end)
            if not gate.is_signaled(1):
                raise Failure(f"ORDERING: elapsed_time() behind a closed gate gave {ms} ms")
            actor.outcomes["gated: already open"] += 1
        except NotReadyError:
            actor.misuse["not-ready-elapsed"] += 1
        for what, call in (("CudaEvent.synchronize", end.synchronize), ("GpuStream.synchronize", t.synchronize)):
            try:
                call(timeout=rng.choice([0, 0.002]))
                if not gate.is_signaled(1):
                    raise Failure(f"ORDERING: {what}(timeout) returned behind a closed gate")
            except TimeoutError:
                actor.misuse[f"timeout-gated-{what}"] += 1
        must_come("the gate", gate.wait, 1, timeout=WAIT)
        must_come("CudaEvent.synchronize() behind an opened gate", end.synchronize, timeout=WAIT)
        if not start.elapsed_time(end) >= 0:
            raise Failure("TIMING: negative elapsed time")
        for x in (start, end, gate, t):
            x.close()
    finally:
        gw.temp_streams.release()


@op("gpu_close_pending", 1, GPU_MODES)
def _gpu_close_pending(actor):
    """close() with a GPU signal still pending behind a gate: a GPU wait for that value must
    not pass before the signal lands (the data written before it must be there)."""
    gw = WORLD.gpu
    rng = actor.rng
    if not gw.temp_streams.acquire(blocking=False):
        return
    pair = gw.buffers.get()
    try:
        if pair is None:
            return
        host, dev = pair
        k = 7 + actor.n % 1000
        t1, t2 = GpuStream(0), GpuStream(0)
        gate = WORLD.gates.add(rng.uniform(0.02, 0.08))
        a = AtomicEvent(0)
        driver.memset_d32_async(dev, 0, 256, t1._handle)
        gate.wait(1, t1)
        driver.memset_d32_async(dev, k, 256, t1._handle)
        a.signal(k, t1)
        a.wait(k, t2)
        driver.memcpy_dtoh_async(host, dev, 1024, t2._handle)
        done = CudaEvent().record(t2)
        a.close()  # the signal of k is still behind the gate
        must_come("the gate", gate.wait, 1, timeout=WAIT)
        must_come("the copy behind the closed counter", done.synchronize, timeout=WAIT)
        got = min(words(host, 256))
        if got != k:
            raise Failure(f"ORDERING: after AtomicEvent.close() a GPU wait for {k} passed before its pending signal "
                          f"landed (the copy behind it read {got}, not {k})")
        must_come("GpuStream.synchronize()", t1.synchronize, timeout=WAIT)
        for x in (done, t1, t2, gate):
            x.close()
    finally:
        if pair is not None:
            gw.buffers.put(pair)
        gw.temp_streams.release()


@op("gpu_close_stranded", 1, GPU_MODES)
def _gpu_close_stranded(actor):
    """A GPU wait for a value nobody signals is let go by close(): the stream completes."""
    gw = WORLD.gpu
    if not gw.temp_streams.acquire(blocking=False):
        return
    try:
        t = GpuStream(0)
        a = AtomicEvent(0)
        a.signal(2)
        # close() releases the wait, so it runs on a thread of its own: this one makes driver calls
        # behind the wait (the wait's own fence record too), which may block until it is released
        # (hostfn: the wait holds the driver's host-function thread). It closes once the wait is
        # enqueued, or after a while if this thread is stuck in the driver after registering it.
        enqueued = threading.Event()
        closer = threading.Thread(target=lambda: (enqueued.wait(2.0), a.close()), name="stress-closer",
                                  daemon=True)
        closer.start()
        try:
            a.wait(5, t)  # never signalled: close() lets it go
        finally:
            enqueued.set()
        driver.memset_d32_async(gw.scratch, 1, 64, t._handle)
        done = CudaEvent().record(t)
        closer.join(WAIT)
        if closer.is_alive():
            raise Failure("STUCK: AtomicEvent.close() of a counter with a stranded GPU wait", stacks=True)
        must_come("a stream behind a GPU wait that close() released", done.synchronize, timeout=WAIT)
        done.close()
        t.close()
    finally:
        gw.temp_streams.release()


@op("benchmark", 1, GPU_MODES)
def _benchmark(actor):
    gw = WORLD.gpu
    rng = actor.rng
    s = rng.choice(gw.consumers)
    book = rng.choice(gw.pools + [None])
    repeat = rng.randint(1, 5)
    res = ce.benchmark(lambda: driver.memset_d32_async(gw.scratch, 2, 256, s._handle), warmup=rng.randint(0, 2),
                       repeat=repeat, stream=s, pool=None if book is None else book.pool, timeout=WAIT,
                       flush_l2=not SIM and rng.random() < 0.05)
    if len(res.gpu_ms) != repeat or not all(ms >= 0 for ms in res.gpu_ms):
        raise Failure(f"BENCHMARK: {res.gpu_ms} for {repeat} calls")


@op("gpu_misuse", 2, GPU_MODES)
def _gpu_misuse(actor):
    gw = WORLD.gpu
    rng = actor.rng
    s = rng.choice(gw.consumers)
    cases = [
        ("gpu-wait-timeout-arg", TypeError, lambda: AtomicEvent(0).wait(1, s, timeout=1)),
        ("gpu-record-non-stream", TypeError, lambda: CudaEvent(0).record("stream")),
        ("gpu-device-ordinal", ValueError, lambda: ce.Device(ce.device_count() + 3)),
        ("gpu-priority", ValueError, lambda: GpuStream(0, priority=1000)),
        ("gpu-priority-type", TypeError, lambda: GpuStream(0, priority=0.5)),
        ("gpu-wait-unrecorded", NotRecordedError, lambda: CudaEvent(0).wait(s)),
        ("gpu-event-never-signalled", NotRecordedError, lambda: Event().wait(s)),
        ("gpu-closed-counter-wait", ClosedError, lambda: _closed_atomic_gpu().wait(9, s)),
        ("gpu-closed-counter-signal", ClosedError, lambda: _closed_atomic_gpu().signal(9, s)),
        ("gpu-signal-lower", ValueError, lambda: _signalled_gpu(s).signal(1, s)),
    ]
    if gw.backend == "mem32":
        cases.append(("mem32-value-2**31", ValueError, lambda: AtomicEvent(0).signal(1 << 31, s)))
    if ce.device_count() >= 2:
        cases.append(("device-mismatch", DeviceMismatchError, lambda: CudaEvent(0).record(gw.second_device_stream())))
    name, exc, call = rng.choice(cases)
    expect(actor, name, exc, call)
    if rng.random() < 0.2:
        _gpu_refused_deadlock(actor)


def _closed_atomic_gpu():
    a = AtomicEvent(0)
    a.signal(3)
    a.close()
    return a


def _signalled_gpu(s):
    a = AtomicEvent(0)
    a.signal(5, s)
    return a


def _gpu_refused_deadlock(actor):
    """The detectable deadlock: a CpuStream task enqueueing a GPU wait for a value only a later
    task of that same stream signals is refused with RuntimeError."""
    gw = WORLD.gpu
    if not gw.temp_streams.acquire(blocking=False):
        return
    gate = threading.Event()
    c = CpuStream(f"refuse-{actor.name}")
    try:
        t = GpuStream(0)
        a = AtomicEvent(0)
        box = []

        def task():
            try:
                a.wait(5, t)
                box.append("enqueued")
            except RuntimeError:
                box.append("refused")
            except BaseException as exc:  # noqa: BLE001 - reported below
                box.append(exc)

        c.enqueue(gate.wait, WAIT)
        c.enqueue(task)
        a.signal(5, c)
        gate.set()
        must_come("CpuStream.synchronize()", c.synchronize, timeout=WAIT)
        must_come("GpuStream.synchronize()", t.synchronize, timeout=WAIT)
        if box != ["refused"]:
            raise Failure(f"MISUSE gpu-wait-own-stream-later: {box}, not RuntimeError")
        actor.misuse["gpu-wait-own-stream-later"] += 1
        a.close()
        t.close()
    finally:
        gate.set()
        c.close(timeout=WAIT)
        gw.temp_streams.release()


@op("host_backend_gpu_stream", 1, ("sim",))
def _host_backend_gpu(actor):
    # a host-backend counter on a GPU stream: only meaningful where the backend is host
    if WORLD.gpu.backend != "host":
        return
    expect(actor, "host-backend-gpu-stream", ValueError, AtomicEvent(0).signal, 1, WORLD.gpu.consumers[0])


# -- threads -----------------------------------------------------------------------------------------------
def selected_ops():
    global OP_NAMES
    ops = [o for o in OPS if ARGS.mode in o.modes]
    names = {o.name for o in OPS}
    for flag in ("skip", "only"):
        for name in filter(None, getattr(ARGS, flag).split(",")):
            if name not in names:
                sys.exit(f"stress.py: --{flag}: no operation {name!r}; --list-ops lists them")
    if ARGS.only:
        only = set(ARGS.only.split(","))
        ops = [o for o in ops if o.name in only]
    skip = set(filter(None, ARGS.skip.split(",")))
    ops = [o for o in ops if o.name not in skip]
    OP_NAMES = {o.name for o in ops} | {"produce"}
    return ops


def resolve_deferred(actor, everything=False) -> None:
    while actor.deferred and (everything or len(actor.deferred) > 4):
        actor.deferred.popleft()()
        actor.tick()


def finish(actor) -> None:
    """The end of a thread's part: deferred checks, held handles, uncommitted tasks."""
    resolve_deferred(actor, everything=True)
    for book, key, hs in actor.held_handles:
        book.giving(actor, hs)
        book.pool.release_many(*key, hs)
    actor.held_handles = []
    for w in WORLD.workers:
        w.commit(WORLD.consumers[actor.index % len(WORLD.consumers)])


def worker_thread(actor, ops, cum) -> None:
    _tls.actor = actor
    rng = actor.rng
    try:
        if GPU:
            ce.Device(0).make_current()
        while not RUN.stop.is_set() and not RUN.failed.is_set():
            if ARGS.self_test_hang and actor.index == 0 and clock() > 0.5:
                actor.begin("inject_hang")
                inject_hang()
            if ARGS.self_test_fail and actor.index == 1 and clock() > 0.5:
                actor.begin("inject_reorder")
                chain = WORLD.chains[0]
                chain.produce(actor, inject=True)
                chain.host(actor)
                actor.end()
                continue
            o = rng.choices(ops, cum_weights=cum)[0]
            actor.begin(o.name)
            o.fn(actor)
            actor.end()
            if actor.deferred:
                actor.begin("(deferred checks)")
                resolve_deferred(actor)
                actor.end()
        actor.begin("finish")
        finish(actor)
        actor.end()
    except Failure as f:
        fail(f"{f} [{actor.where()}]", exc=f)
    except BaseException as exc:  # noqa: BLE001 - any error of the library is a finding
        fail(f"unexpected {type(exc).__name__} in {actor.where()}: {exc}", exc=exc)
    finally:
        actor.watched = False


def producer_thread(actor) -> None:
    _tls.actor = actor
    rng = actor.rng
    try:
        if GPU:
            ce.Device(0).make_current()
        producers = WORLD.all_producers()
        while not RUN.stop.is_set() and not RUN.failed.is_set():
            actor.begin("produce")
            WORLD.gates.open_due()
            for produce in rng.sample(producers, rng.randint(1, len(producers))):
                produce(actor)
                actor.tick()
                WORLD.gates.open_due()
            actor.end()
            time.sleep(rng.random() * 0.002)
        # gates that workers still add while they finish their last operation must open too
        actor.begin("open gates until the workers are done")
        while any(w.watched for w in WORKER_ACTORS) and not RUN.failed.is_set():
            WORLD.gates.open_due()
            actor.tick()
            time.sleep(0.002)
        WORLD.gates.open_due(everything=True)
        actor.end()
    except Failure as f:
        fail(f"{f} [{actor.where()}]", exc=f)
    except BaseException as exc:  # noqa: BLE001
        fail(f"unexpected {type(exc).__name__} in {actor.where()}: {exc}", exc=exc)
    finally:
        actor.watched = False


# -- the end: close everything, account for everything -------------------------------------------------
ALLOWED_THREADS = ("stress-watchdog", "stress-gatekeeper", "sim-gpu", "sim-hostfn", "cudaevents-finalizer")


def gatekeeper_thread() -> None:
    """Opens the gates when due, for as long as the process runs: host signals only."""
    while True:
        WORLD.gates.open_due()
        time.sleep(0.001)


def teardown(main) -> dict:
    main.begin("open every gate")
    WORLD.gates.open_due(everything=True)
    main.begin("final chain checks")
    for chain in WORLD.chains:
        if chain.k:
            must_come(f"{chain.name} final wait", chain.ctr.wait, chain.k, timeout=WAIT)
        chain.check(chain.k, "the end of the run")
        if chain.ctr.value != chain.k:
            raise Failure(f"COUNTER {chain.name}: value {chain.ctr.value} at the end, signalled {chain.k} last")
    for vc in WORLD.vchains:
        if vc.k:
            must_come(f"{vc.name} final wait", vc.ev.wait, timeout=WAIT)
            vc.check(vc.k, "the end of the run")
    for fc in WORLD.fences:
        must_come(f"{fc.name} final wait", fc.fence.wait, timeout=WAIT)
        fc.check(fc.fence.count, "the end of the run")
        if fc.fence.completed != fc.fence.count:
            raise Failure(f"FENCE {fc.name}: completed {fc.fence.completed} of {fc.fence.count} at the end")
    gw = WORLD.gpu
    if gw is not None:
        for chain in gw.all_chains():
            main.tick()
            chain.final_check()
        if gw.h2g.k:
            must_come("h2g final wait", gw.h2g.ctr.wait, gw.h2g.k, timeout=WAIT)
    main.begin("close the racy objects")
    for r in WORLD.racy:
        r.close(main)
        r.retire(main)
    main.begin("close the workers")
    for w in WORLD.workers:
        must_come(f"{w.name}.close()", w.close, timeout=WAIT)
    main.begin("timers")
    regions = {}
    if gw is not None:
        WORLD.timers.extend(gw.timers)
    for book in WORLD.timers:
        main.tick()
        regions[book.name] = book.verify()
    main.begin("synchronize and close the streams")
    streams = list(WORLD.consumers)
    for c in WORLD.chains + WORLD.vchains + WORLD.fences:
        streams += c.streams
    if gw is not None:
        streams += gw.h2g.streams + [c.cpu for c in gw.chains if c.cpu is not None]
    for s in streams:
        main.tick()
        must_come(f"{s.thread.name}.synchronize()", s.synchronize, timeout=WAIT)  # a task error raises here
        s.close(timeout=WAIT)
    if gw is not None:
        gpu_streams = list(gw.consumers)
        for c in gw.all_chains():
            gpu_streams += c.streams + ([c.cpu_gpu] if c.cpu_gpu is not None else [])
        for s in gpu_streams:
            main.tick()
            must_come("GpuStream.synchronize()", s.synchronize, timeout=WAIT)
    main.begin("close the counters")
    for c in WORLD.chains:
        c.ctr.close()
    for c in WORLD.vchains:
        c.ev.close()
    for c in WORLD.fences:
        c.fence.close()
    if gw is not None:
        for c in gw.chains:
            c.ctr.close()
        gw.fchain.fence.close()
        gw.vchain.ev.close()
        gw.h2g.ctr.close()
    main.begin("the worker ledger")
    del streams
    _collect_until(lambda: len(WORLD.ledger.ran) >= len(WORLD.ledger.added), main)
    missing = [WORLD.ledger.added[t] for t in WORLD.ledger.added if WORLD.ledger.ran[t] != 1]
    if missing:
        raise Failure(f"WORKER: {len(missing)} task(s) never ran, e.g. {missing[:3]}")
    for w in WORLD.workers:
        errors = w.errors
        unexpected = [e for e in errors if not isinstance(e, InjectedError)]
        if unexpected or len(errors) != WORLD.ledger.injected[w.name]:
            raise Failure(f"WORKER {w.name}: errors {errors!r}, expected {WORLD.ledger.injected[w.name]} injected")
    main.begin("library threads")
    ours = {a.thread for a in RUN.actors if getattr(a, "thread", None) is not None}
    left = _collect_until(lambda: not _library_threads(ours), main, what=lambda: _library_threads(ours))
    if left:
        raise Failure(f"THREADS: {len(left)} library thread(s) still alive after everything was closed and "
                      f"collected: {sorted(t.name for t in left)[:10]}")
    main.begin("pools")
    pools = {}
    books = list(WORLD.fake_pools) + (gw.pools if gw is not None else [])
    if gw is not None:
        for book in gw.timers:
            book.timer = None
        WORLD.timers = []
        gc.collect()
    for book in books:
        s = book.pool.stats()
        pools[book.name] = s.__dict__
        if s.live != 0 or s.creates != s.destroys + s.cached:
            raise Failure(f"POOL {book.name}: at the end {s}; expected live == 0 and creates == destroys + cached")
        if book.held:
            raise Failure(f"POOL {book.name}: handles still held by the script: {list(book.held)[:5]}")
        h = book.handles
        if h is not None:
            if h.problems:
                raise Failure(f"POOL {book.name}: {h.problems[:3]}")
            if h.created != s.creates or h.destroyed != s.destroys or len(h.alive) != s.cached:
                raise Failure(f"POOL {book.name}: created {h.created}, destroyed {h.destroyed}, alive {len(h.alive)} "
                              f"by the handles' own count, but the pool says {s}")
    pools["default"] = ce.default_pool().stats().__dict__
    if gw is not None:
        main.begin("free the GPU memory")
        # every stream, destroyed ones too, must be done with the memory; the driver's wait has no
        # timeout, so it runs in a thread of its own that is given one
        syncer = threading.Thread(target=ce.Device(0).synchronize, name="stress-device-sync", daemon=True)
        syncer.start()
        syncer.join(WAIT)
        if syncer.is_alive():
            raise Failure(f"STUCK: Device(0).synchronize() did not return within {WAIT:g} s: GPU work is still "
                          "blocked at the end of the run", stacks=True)
        if len(gw.buffers.free) != len(gw.buffers.all):
            raise Failure(f"BUFFERS: {len(gw.buffers.all) - len(gw.buffers.free)} readback buffer(s) never came "
                          "back (a deferred check or worker task never ran)")
        for host, dev in gw.buffers.all:
            driver.mem_host_free(host)
            driver.mem_free(dev)
        for c in gw.all_chains():
            driver.mem_free(c.ring)
        driver.mem_host_free(gw.h2g.address)
        driver.mem_free(gw.scratch)
        for s in gpu_streams:
            s.close()
    if SIMULATOR is not None:
        main.begin("simulated driver's books")
        gc.collect()
        if SIMULATOR.violations:
            raise Failure(f"SIM: {SIMULATOR.violations[:3]}")
        all_pools = [b.pool for b in books if b.handles is None] + [ce.default_pool()]
        booked = sum(p.stats().cached + p.stats().live for p in all_pools)
        alive = SIMULATOR.live_events()
        pools["sim native events alive"] = alive
        if alive != booked:
            raise Failure(f"SIM: {alive} native events alive in the driver, the pools account for {booked}")
    if RUN.unexpected_logs:
        raise Failure(f"LOG: cudaevents logged unexpected errors: {RUN.unexpected_logs[:3]}")
    return {"pools": pools, "timer regions": regions}


def _library_threads(ours):
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and t not in ours and t.name not in ALLOWED_THREADS
            and not t.name.startswith("Thread-") and t.is_alive()]


def _collect_until(done, main, what=None, timeout=None):
    """Collect garbage and wait (``timeout``, default WAIT) until ``done()``; returns ``what()``
    when given (what is left), else None."""
    end = time.monotonic() + (WAIT if timeout is None else timeout)
    while not done() and time.monotonic() < end:
        gc.collect()
        main.tick()
        time.sleep(0.05)
    return what() if what is not None else None


def main() -> int:
    ops = selected_ops()
    if ARGS.list_ops:
        for o in ops:
            print(f"{o.name:28} weight {o.weight}")
        return 0
    if not ops:
        sys.exit("stress.py: no operations selected")
    if ARGS.mode == "gpu" and not ce.is_available():
        sys.exit(f"stress.py --mode gpu: no usable GPU ({driver.unavailable_reason()})")
    faulthandler.enable()
    faulthandler.dump_traceback_later(ARGS.seconds + STALL + 120, exit=True)  # the hard bound of the run
    sys.unraisablehook = _unraisable
    threading.excepthook = _thread_excepthook
    log = logging.getLogger("cudaevents")
    log.addHandler(_LogTally())
    log.propagate = False
    log.setLevel(logging.WARNING)
    rng = random.Random(f"{ARGS.seed}:main")
    gc_threshold = rng.choice([50, 200, 700])
    switch = rng.choice([1e-4, 5e-4, 1e-3, 5e-3])
    gc.set_threshold(gc_threshold, 5, 5)  # frequent collections: finalizers inside the library's locks
    sys.setswitchinterval(switch)

    main_actor = Actor("main", -1)
    _tls.actor = main_actor
    main_actor.thread = threading.current_thread()
    threading.Thread(target=watchdog, name="stress-watchdog", daemon=True).start()
    global WORLD
    try:
        main_actor.begin("build the world")
        WORLD = World(rng)
        main_actor.end()
    except Failure as f:
        fail(str(f), exc=f)
        report_failure()
    cum = list(itertools.accumulate(o.weight for o in ops))
    threads = []
    producer = Actor("producer", 99)
    threading.Thread(target=gatekeeper_thread, name="stress-gatekeeper", daemon=True).start()
    producer.thread = threading.Thread(target=producer_thread, args=(producer,), name="stress-producer")
    threads.append(producer.thread)
    for i in range(ARGS.threads):
        a = Actor(f"w{i}", i)
        WORKER_ACTORS.append(a)
        a.thread = threading.Thread(target=worker_thread, args=(a, ops, cum), name=f"stress-w{i}")
        threads.append(a.thread)
    for t in threads:
        t.start()
    end = time.monotonic() + ARGS.seconds
    main_actor.begin("the mix runs")
    while time.monotonic() < end and not RUN.failed.is_set():
        main_actor.tick()
        RUN.failed.wait(0.1)
    RUN.stop.set()
    if RUN.failed.is_set():
        report_failure()
    main_actor.begin("join the threads")
    for t in threads:
        while t.is_alive():
            main_actor.tick()  # a thread that hangs is the watchdog's (by its own heartbeat)
            t.join(0.1)
            if RUN.failed.is_set():
                report_failure()
    if RUN.failed.is_set():
        report_failure()
    try:
        books = teardown(main_actor)
    except Failure as f:
        fail(f"{f} [teardown: {main_actor.current}]", exc=f)
    except BaseException as exc:  # noqa: BLE001
        fail(f"unexpected {type(exc).__name__} in teardown ({main_actor.current}): {exc}", exc=exc)
    if RUN.failed.is_set():
        report_failure()
    main_actor.end()
    main_actor.watched = False
    faulthandler.cancel_dump_traceback_later()
    ops_done = collections.Counter()
    misuse = collections.Counter()
    outcomes = collections.Counter(RUN.outcomes)
    for a in RUN.actors:
        if a is not main_actor:
            ops_done.update({k: v for k, v in a.ops.items() if k in OP_NAMES})
        misuse.update(a.misuse)
        outcomes.update(a.outcomes)
    summary = {
        "seed": ARGS.seed, "mode": ARGS.mode, "backend": WORLD.gpu.backend if WORLD.gpu else BACKEND,
        "hot_path": compiled.describe(),
        "threads": ARGS.threads, "seconds": ARGS.seconds, "elapsed": round(clock(), 2),
        "gc_threshold": gc_threshold, "switch_interval": switch,
        "ops_total": sum(ops_done.values()), "ops": dict(sorted(ops_done.items())),
        "misuse_caught": sum(misuse.values()), "misuse": dict(sorted(misuse.items())),
        "outcomes": dict(sorted(outcomes.items())), "logged": dict(RUN.logs), **books,
    }
    if SIMULATOR is not None:
        summary["sim"] = dict(SIMULATOR.counts)
    print(f"stress: ok seed={ARGS.seed} mode={ARGS.mode} backend={summary['backend']} threads={ARGS.threads} "
          f"seconds={ARGS.seconds:g} ops={summary['ops_total']} misuse caught={summary['misuse_caught']}")
    print("STRESS-SUMMARY " + json.dumps(summary, sort_keys=False, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
