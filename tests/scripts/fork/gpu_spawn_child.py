"""multiprocessing's 'spawn' start method: a fresh interpreter uses CUDA while the parent has it
initialized.

Run by tests/reliability/test_fork.py::test_gpu_spawn_child_uses_cuda."""

import multiprocessing

import cudaevents as ce
from cudaevents._core import driver


def spawn_child():
    assert ce.is_available(), driver.unavailable_reason()
    s = ce.GpuStream()
    start = ce.CudaEvent(timing=True).record(s)
    end = ce.CudaEvent(timing=True).record(s)
    end.synchronize(timeout=30)
    assert start.elapsed_time(end) >= 0
    a = ce.AtomicEvent(0)
    a.signal(1, s)
    a.wait(1, timeout=30)
    w = ce.Worker()
    w.add_task(print, "spawn child: worker task ran", flush=True)
    w.commit(s)
    w.synchronize(timeout=30)
    print("spawn child: ok", flush=True)


if __name__ == "__main__":
    s = ce.GpuStream()
    ce.CudaEvent().record(s).synchronize(timeout=30)
    p = multiprocessing.get_context("spawn").Process(target=spawn_child)
    p.start()
    p.join(120)
    if p.is_alive():
        p.kill()
        raise SystemExit("the spawn child hung")
    assert p.exitcode == 0, p.exitcode
    ce.CudaEvent().record(s).synchronize(timeout=30)
    print("parent: ok", flush=True)
