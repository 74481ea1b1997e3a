"""A parent that looked for CUDA and found none forks: the child keeps that reason.

Run by tests/reliability/test_fork.py::test_fork_after_failed_init_keeps_the_original_reason."""

from helpers.forking import fork_and_wait

import cudaevents as ce
from cudaevents._core import driver

driver._init_started = True
driver._reason = "no CUDA driver (simulated)"
assert not ce.is_available()
def child():
    assert not driver.state.forked
    assert driver.unavailable_reason() == "no CUDA driver (simulated)"
    print("child: ok", flush=True)
code = fork_and_wait(child)
assert code == 0
