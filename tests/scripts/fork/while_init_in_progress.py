"""A fork while another thread is inside cuInit: the child is refused, and does not hang.

Run by tests/reliability/test_fork.py::test_fork_while_init_in_progress_is_refused."""

from helpers.forking import expect_fork_error, fork_and_wait

import cudaevents as ce
from cudaevents._core import driver

driver._lock.acquire()           # as held by a thread inside _init()
driver._init_started = True
def child():
    assert driver.state.forked
    expect_fork_error("driver()", driver.bindings)
    assert not ce.is_available()
    print("child: ok", flush=True)
code = fork_and_wait(child)
assert code == 0
