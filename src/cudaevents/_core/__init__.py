"""The core: CUDA access, devices, GPU streams, the event pool and CudaEvent.

Bottom up, each module imports only those above it in this list:

- ``errors``: the exception classes; ``env``: every ``CUDAEVENTS_*`` variable, parsed.
- ``lifetime``: interpreter exit, fork hooks, the quarantine of memory the GPU may still touch.
- ``driver``: the only module that talks to ``cuda.bindings``, one named, checked wrapper per call.
- ``wait``: host wait policies and deadlines.
- ``devices``: ``Device`` and its capabilities; ``streams``: ``GpuStream``, ``as_stream``.
- ``pool``: ``EventPool``; ``cuda_event``: ``CudaEvent`` (and ``HeldEvent``).
"""
