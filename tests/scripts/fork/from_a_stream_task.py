"""A CpuStream task forks: the child's copy of the stream thread runs none of the parent's queue.

Run by tests/reliability/test_fork.py::test_fork_from_a_stream_task_does_not_run_the_parents_queue_in_the_child."""

import os
import threading
import traceback

from helpers.forking import expect_closed_by_fork, wait_for_child

import cudaevents as ce

r, wfd = os.pipe()
gate = threading.Event()
pids = []


def fork_task():
    gate.wait(30)
    pid = os.fork()
    if pid == 0:
        try:
            expect_closed_by_fork("synchronize", cs.synchronize)
            expect_closed_by_fork("enqueue", cs.enqueue, print)
            os.write(wfd, b"child returned from the task\n")
        except BaseException:  # noqa: BLE001 - the child reports whatever it raised
            traceback.print_exc()
            os._exit(1)
        return                               # back into the stream's loop, in the child
    pids.append(pid)


def later():
    os.write(wfd, f"later task ran in {os.getpid()}\n".encode())


cs = ce.CpuStream()
cs.enqueue(fork_task)
cs.enqueue(later)
gate.set()
cs.synchronize(timeout=30)
(pid,) = pids
status = wait_for_child(pid, 30, "the child forked from a stream task")
assert os.waitstatus_to_exitcode(status) == 0, status
os.close(wfd)
lines = os.read(r, 4096).decode().splitlines()
assert sorted(lines) == sorted(["child returned from the task", f"later task ran in {os.getpid()}"]), lines
cs.close(timeout=30)
print("parent: ok", flush=True)
