"""Process identities: a live process is alive, an ended one (also a zombie) is not, and a
reused pid does not pass for the process that had it."""

import os
import subprocess
import sys

from cudaevents._core import processes


def test_this_process_is_alive():
    me = processes.me()
    assert me[0] == os.getpid()
    assert processes.alive(me)


def test_a_running_child_is_alive_and_its_zombie_and_its_end_are_not():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        start = processes._start_time(child.pid)
        assert start is not None
        ident = (child.pid, start)
        assert processes.alive(ident)
        child.stdin.close()
        # not reaped yet: a zombie, which has ended
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert not processes.alive(ident)
    finally:
        child.wait(timeout=10)
    assert not processes.alive(ident)


def test_a_pid_with_another_start_time_is_another_process():
    pid, start = processes.me()
    assert not processes.alive((pid, start + 1)) or start == 0
    assert not processes.alive((os.getppid(), 1)) or processes._start_time(os.getppid()) in (0, 1)


def test_a_look_at_another_process_keeps_one_pidfd_and_closes_it_once_the_process_ended():
    if not hasattr(os, "pidfd_open"):
        import pytest

        pytest.skip("no os.pidfd_open on this system: looks read /proc (the test below covers that path)")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        ident = (child.pid, processes._start_time(child.pid))
        assert processes.alive(ident) and processes.alive(ident)
        fd = processes._pidfds[ident]
        assert fd >= 0 and os.fstat(fd)  # one descriptor, kept for later looks
        child.stdin.close()
        child.wait(timeout=10)
        assert not processes.alive(ident)
        assert processes._pidfds[ident] == processes._ENDED
        try:
            os.fstat(fd)
        except OSError:
            pass  # closed once the process was seen ended
        else:
            assert False, "the ended process's pidfd is still open"
        assert not processes.alive(ident)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_without_pidfds_a_look_reads_proc_and_tells_the_same(monkeypatch):
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        ident = (child.pid, processes._start_time(child.pid))
        assert processes.alive(ident)
        assert ident not in processes._pidfds
        assert not processes.alive((child.pid, ident[1] + 1))  # a reused pid is another process
        child.stdin.close()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert not processes.alive(ident)  # a zombie has ended
    finally:
        child.wait(timeout=10)


def test_processes_that_ended_unlooked_at_keep_no_pidfd_once_another_is_looked_at():
    if not hasattr(os, "pidfd_open"):
        import pytest

        pytest.skip("no os.pidfd_open on this system")
    children = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
                for _ in range(3)]
    try:
        idents = [(c.pid, processes._start_time(c.pid)) for c in children]
        assert processes.alive(idents[0]) and processes.alive(idents[1])
        for c in children[:2]:
            c.stdin.close()
            c.wait(timeout=10)
        assert processes.alive(idents[2])  # a new look sweeps the ended ones' descriptors
        assert processes._pidfds[idents[0]] == processes._pidfds[idents[1]] == processes._ENDED
        assert processes._pidfds[idents[2]] >= 0
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
            c.wait(timeout=10)
