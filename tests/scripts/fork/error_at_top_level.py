"""An unhandled CUDA use in a forked child shows the fork error in its traceback.

Run by tests/reliability/test_fork.py::test_fork_error_is_clear_at_the_top_level."""

from helpers.fake_driver import install
from helpers.forking import fork_and_wait

import cudaevents as ce

fake = install(keeps_up=True)  # a simulated driver, initialized: the parent has used CUDA

s = ce.GpuStream(0)
def child():
    ce.CudaEvent(0).record(s)
code = fork_and_wait(child)
assert code == 1, code
print("parent: ok", flush=True)
