"""A shared AtomicEvent on the host path, across processes started with multiprocessing's
'spawn' method: ``shared_counter.py SCENARIO``. Prints ``ok SCENARIO`` and exits 0 when every
check held; every wait has a timeout and every child is joined with one (killed past it).

Run by tests/test_shared_counter.py. ``ctl`` is a second shared counter the processes step
through to take turns (its values only grow: each step is one process's signal)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time

from helpers.spawning import T, attached_pids, expect, joined, spawn

import cudaevents as ce


def signal_held_back(a, ctl, value: int, step: int) -> None:
    """A CpuStream signal of ``value`` held back until the other process has seen it pending:
    ``ctl`` at ``step`` says it is pending, the other process's ``step + 1`` lets it land."""
    gate = threading.Event()
    s = ce.CpuStream("child")
    s.enqueue(gate.wait, T)
    a.signal(value, s)
    ctl.signal(step)
    ctl.wait(step + 1, timeout=T)
    gate.set()
    s.synchronize(timeout=T)
    s.close(timeout=T)


# -- signals of one process, waits of another --------------------------------------------------
def waits_child(a, ctl):
    a.wait(1, timeout=T)                  # a host wait for the parent's host signal
    ctl.signal(1)
    s = ce.CpuStream("child")
    a.wait(2, s)                          # a CpuStream wait ...
    ctl.signal(2, s)                      # ... and a CpuStream signal behind it
    s.synchronize(timeout=T)
    assert a.value == 2
    s.close(timeout=T)
    a.close()
    ctl.close()


def host_to_waits():
    a, ctl = ce.AtomicEvent(shared=True), ce.AtomicEvent(shared=True)
    assert a.shared and a.backend == "host"
    p = spawn(waits_child, a, ctl)
    a.signal(1)
    ctl.wait(1, timeout=T)
    assert not ctl.is_signaled(2)
    a.signal(2)
    ctl.wait(2, timeout=T)
    joined(p)


# -- turns taken many times: every signal of one process seen by the other's next wait -------
ROUNDS = 200


def pong_child(a):
    s = ce.CpuStream("child")
    for r in range(ROUNDS):
        a.wait(2 * r + 1, timeout=T)
        if r % 2:
            a.signal(2 * r + 2)
        else:
            a.signal(2 * r + 2, s)        # a CpuStream signal, racing the parent's next wait
    s.synchronize(timeout=T)
    s.close(timeout=T)
    a.close()


def ping_pong():
    a = ce.AtomicEvent(shared=True)
    p = spawn(pong_child, a)
    s = ce.CpuStream("parent")
    for r in range(ROUNDS):
        if r % 3:
            a.signal(2 * r + 1)
        else:
            a.signal(2 * r + 1, s)
        a.wait(2 * r + 2, timeout=T)
    joined(p)
    assert a.value == 2 * ROUNDS and a.error is None
    s.close(timeout=T)


# -- values never decrease, across processes ----------------------------------------------------
def order_child(a, ctl):
    ctl.wait(1, timeout=T)
    expect(ValueError, a.signal, 3, match=f"below 5, the value already signalled (by process {os.getppid()})")
    a.signal(5)                           # equal is fine
    signal_held_back(a, ctl, 9, 2)
    a.close()
    ctl.close()


def monotonic():
    a, ctl = ce.AtomicEvent(shared=True), ce.AtomicEvent(shared=True)
    p = spawn(order_child, a, ctl)
    a.signal(5)
    ctl.signal(1)
    ctl.wait(2, timeout=T)                # the child's signal of 9 is pending
    expect(ValueError, a.signal, 7, match="below 9")
    expect(ValueError, a.signal, 10, match=f"process {p.pid}'s signal of 9 has not happened yet")
    s = ce.CpuStream("parent")
    a.signal(10, s)                       # a stream signal waits for the child's 9 first
    ctl.signal(3)
    a.wait(10, timeout=T)
    s.synchronize(timeout=T)
    joined(p)
    assert a.value == 10
    s.close(timeout=T)


# -- timeouts ----------------------------------------------------------------------------------
def timeout_child(a, ctl):
    expect(TimeoutError, a.wait, 1, timeout=0.2, match="did not complete within 0.2 s")
    ctl.signal(1)


def timeouts():
    a, ctl = ce.AtomicEvent(shared=True), ce.AtomicEvent(shared=True)
    p = spawn(timeout_child, a, ctl)
    ctl.wait(1, timeout=T)
    expect(TimeoutError, a.wait, 1, timeout=0.2, match="did not complete within 0.2 s")
    joined(p)


# -- a killed process ----------------------------------------------------------------------------
def doomed_child(a, ctl):
    a.signal(2)
    ctl.signal(1)
    time.sleep(T)                         # killed long before


def peer_waiter_child(a, ctl):
    ctl.wait(1, timeout=T)
    ctl.signal(2)
    err = expect(ce.PeerError, a.wait, 5, timeout=T, match="ended without closing it")
    assert err.died and err.value == 2
    a.wait(2, timeout=1)                  # reached before the death: still returns


def killed():
    a, ctl = ce.AtomicEvent(shared=True), ce.AtomicEvent(shared=True)
    doomed = spawn(doomed_child, a, ctl)
    waiter = spawn(peer_waiter_child, a, ctl)
    ctl.wait(2, timeout=T)
    killed_at = []

    def kill_soon():
        time.sleep(0.3)                   # the parent's own wait has begun by then
        killed_at.append(time.monotonic())
        os.kill(doomed.pid, signal.SIGKILL)

    threading.Thread(target=kill_soon, daemon=True).start()
    err = expect(ce.PeerError, a.wait, 5, timeout=T, match=f"process {doomed.pid}, which shared this AtomicEvent")
    late = time.monotonic() - killed_at[0]
    assert late < 3, f"the death was seen {late:.1f} s after the kill"
    assert err.pid == doomed.pid and isinstance(err, ce.ClosedError)
    assert a.is_signaled(2) and a.error is err
    a.wait(2, timeout=1)
    a.signal(9)                           # changes nothing: the counter stays broken
    expect(ce.PeerError, a.wait, 9, timeout=1)
    joined(doomed, -signal.SIGKILL)
    joined(waiter)
    assert os.path.exists(a._cell.path)   # the creator is alive: it unlinks when it closes
    a.close()
    assert not os.path.exists(a._cell.path)


def killed_while_blocking():
    """A host wait with the blocking policy sees a death too (its check runs with the
    event's condition held, where failing the counter must not take that lock again)."""
    a, ctl = ce.AtomicEvent(shared=True), ce.AtomicEvent(shared=True)
    doomed = spawn(doomed_child, a, ctl)
    ctl.wait(1, timeout=T)
    threading.Timer(0.3, os.kill, (doomed.pid, signal.SIGKILL)).start()
    start = time.monotonic()
    expect(ce.PeerError, a.wait, 5, timeout=T, policy="block", match=f"process {doomed.pid}")
    assert time.monotonic() - start < 3
    joined(doomed, -signal.SIGKILL)
    a.close()
    ctl.close()


# -- clean ends ----------------------------------------------------------------------------------
def closing_child(a):
    a.signal(1)
    a.close()


def exiting_child(a):
    a.wait(1, timeout=T)                  # exits without closing: the interpreter's exit detaches


def pending_exit_child(a):
    gate = threading.Event()              # never opened: the signal behind it never lands
    s = ce.CpuStream("child")
    s.enqueue(gate.wait, T)
    a.signal(3, s)                        # exits with it pending: the process stays attached


def exit_with_a_pending_signal():
    a = ce.AtomicEvent(shared=True)
    p = spawn(pending_exit_child, a)
    joined(p)
    expect(ce.PeerError, a.wait, 3, timeout=T, match=f"process {p.pid}")


def pending_exit_after_a_later_promise_child(a, ctl):
    gate = threading.Event()              # never opened
    s = ce.CpuStream("child")
    s.enqueue(gate.wait, T)
    a.signal(3, s)
    ctl.signal(1)
    ctl.wait(2, timeout=T)                # the parent has promised 4 since: the page names it


def exit_with_a_pending_signal_after_a_later_promise():
    """The page's last promise is another process's: an exit with an own signal pending still
    counts as a death (the later signal waits for it)."""
    a, ctl = ce.AtomicEvent(shared=True), ce.AtomicEvent(shared=True)
    p = spawn(pending_exit_after_a_later_promise_child, a, ctl)
    ctl.wait(1, timeout=T)
    s = ce.CpuStream("parent")
    a.signal(4, s)                        # behind the child's 3, on this stream
    ctl.signal(2)
    joined(p)
    expect(ce.PeerError, a.wait, 4, timeout=T, match=f"process {p.pid}")
    s.close()
    ctl.close()


def clean_close():
    a = ce.AtomicEvent(shared=True)
    for target in (closing_child, exiting_child):
        p = spawn(target, a)
        joined(p)
    assert attached_pids(a) == {os.getpid()}
    expect(TimeoutError, a.wait, 2, timeout=1.0)  # about 20 looks at the peers: none died
    assert a.error is None
    a.close()


# -- the creator's close and exit ----------------------------------------------------------------
def late_child(data, ctl):
    err = expect(ce.CreatorClosedError, pickle.loads, data, match="was closed in the process that created it, or that process ended")
    assert isinstance(err, ce.ClosedError)
    ctl.signal(1)


def early_child(a, ctl):
    ctl.wait(1, timeout=T)                # the creator closed, and a late child was refused
    a.signal(3)                           # those attached go on
    a.wait(3, timeout=T)
    a.close()


def creator_child(queue):
    a = ce.AtomicEvent(shared=True)
    queue.put(pickle.dumps(a))            # exits without closing: the interpreter's exit unlinks


def creator_closed():
    a, ctl = ce.AtomicEvent(shared=True), ce.AtomicEvent(shared=True)
    data = pickle.dumps(a)
    early = spawn(early_child, a, ctl)
    while len(attached_pids(a)) < 2:      # the early child has received it
        assert early.is_alive(), "the early child ended"
        time.sleep(0.01)
    a.close()
    assert not os.path.exists(a._cell.path)
    expect(ce.ClosedError, pickle.dumps, a, match="send it before closing it")
    joined(spawn(late_child, data, ctl))
    joined(early)
    queue = multiprocessing.get_context("spawn").Queue()
    p = spawn(creator_child, queue)
    data = queue.get(timeout=T)
    joined(p)
    expect(ce.CreatorClosedError, pickle.loads, data)


def doomed_creator_child(queue):
    a = ce.AtomicEvent(shared=True)
    a.signal(1)
    queue.put(pickle.dumps(a))
    time.sleep(T)                         # killed long before


def creator_killed():
    queue = multiprocessing.get_context("spawn").Queue()
    p = spawn(doomed_creator_child, queue)
    data = queue.get(timeout=T)
    a = pickle.loads(data)
    os.kill(p.pid, signal.SIGKILL)
    expect(ce.PeerError, a.wait, 2, timeout=T, match=f"process {p.pid}")
    assert not os.path.exists(a._cell.path)  # whoever saw the creator's death unlinked the file
    joined(p, -signal.SIGKILL)
    ctl = ce.AtomicEvent(shared=True)
    joined(spawn(late_child, data, ctl))  # nobody can receive it any more
    a.close()


# -- GPU streams of this process, on the simulated driver; the children have no GPU -------------
def simulated_gpu():
    """The simulated driver (helpers.fake_driver) for this process, with counters on mem64;
    children started from here see no GPU, on any machine."""
    from helpers.fake_driver import install

    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["CUDAEVENTS_ATOMIC_BACKEND"] = "mem64"
    return install(stream_order=True)


def host_only_child(a, ctl):
    assert a.backend == "mem64" and a.device is None  # its GPU is not here: host and CpuStreams only
    expect(ce.DeviceMismatchError, a.signal, 3, 0, match="which this process does not see")
    a.signal(2)
    ctl.signal(1)
    time.sleep(T)                         # killed long before


def gpu_waits_let_go():
    fake = simulated_gpu()
    a, ctl = ce.AtomicEvent(0, shared=True), ce.AtomicEvent(0, shared=True)
    assert a.backend == "mem64" and (ctypes.addressof(a._cell._page), 4096) in fake.registered
    s = ce.GpuStream(0)
    a.wait(5, s)                          # enqueued here; the simulation passes it, the word is what counts
    doomed = spawn(host_only_child, a, ctl)
    ctl.wait(1, timeout=T)
    assert a.value == 2
    calls = dict(fake.calls)
    os.kill(doomed.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    while a._cell.read() != a._cell.limit - 1:  # no host wait on `a` runs: only the watcher sees it
        assert time.monotonic() - killed_at < 3, "the GPU waits were not let go within 3 s of the death"
        time.sleep(0.01)
    assert dict(fake.calls) == calls, "the watcher called the driver"
    expect(ce.PeerError, a.wait, 5, timeout=T, match=f"process {doomed.pid}")
    a.wait(2, timeout=1)
    expect(ce.PeerError, a.wait, 3, s)    # GPU waits enqueued later raise at once
    a.wait(2, s)                          # ... unless the value was reached before the death
    joined(doomed, -signal.SIGKILL)


def pending_signal_child(a, ctl):
    signal_held_back(a, ctl, 9, 1)
    a.close()


def gpu_signal_after_peer():
    fake = simulated_gpu()
    a, ctl = ce.AtomicEvent(0, shared=True), ce.AtomicEvent(0, shared=True)
    p = spawn(pending_signal_child, a, ctl)
    ctl.wait(1, timeout=T)
    s = ce.GpuStream(0)
    a.signal(10, s)                       # waits on the GPU for the child's 9, then writes 10
    assert fake.value_waits[-1] == (s._id, a._cell._dev, 9), fake.value_waits
    ctl.signal(2)
    a.wait(9, timeout=T)
    fake.run(s)
    a.wait(10, timeout=T)
    joined(p)


if __name__ == "__main__":
    scenario = sys.argv[1]
    globals()[scenario]()
    print("ok", scenario, flush=True)
