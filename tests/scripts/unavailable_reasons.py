"""Where CUDA is unusable, every call that needs a GPU raises CudaUnavailableError saying why:
prints one ``unavailable: <reason>`` line per call. Run by tests/test_without_gpu.py."""

import cudaevents as c

for f in (lambda: c.Device(0), lambda: c.GpuStream(), lambda: c.CudaEvent(0), lambda: c.CudaEvent().record()):
    try:
        f()
    except c.CudaUnavailableError as e:
        print("unavailable:", e)
