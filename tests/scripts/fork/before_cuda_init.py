"""A fork before the parent's first CUDA use: the child initializes (simulated) CUDA itself.

Run by tests/reliability/test_fork.py::test_fork_before_cuda_init_child_may_use_cuda."""

from helpers.fake_driver import install
from helpers.forking import fork_and_wait

import cudaevents as ce
from cudaevents._core import driver


def child():
    assert not driver.state.forked and not driver.state.exiting
    assert driver._d is None                   # still unbound: nothing was refused
    fake = install(keeps_up=True)
    assert ce.is_available()
    s = ce.GpuStream(0)
    e = ce.CudaEvent(0).record(s)
    assert e.query()
    e.close()
    s.close()
    assert "cuEventRecord" in fake.calls and fake.child_calls == []  # its own driver
    print("child: ok", flush=True)


code = fork_and_wait(child)
assert code == 0
print("parent: ok", flush=True)
