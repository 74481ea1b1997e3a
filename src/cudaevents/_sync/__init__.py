"""The synchronization layer, built on the core.

- ``runner``: one thread running callables in order; ``cpu_stream``: ``CpuStream`` on it.
- ``counter_storage``: where a counter's value lives, one class per backend (mem64, mem32,
  hostfn, host), and the recycled slab of pinned slots.
- ``atomic_event``: ``AtomicEvent``, the 64-bit counter CPU and GPU signal and wait on.
- ``event``: the value ``Event``; ``fence``: ``Fence``; ``worker``: ``Worker``.
"""
