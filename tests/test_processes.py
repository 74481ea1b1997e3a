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
