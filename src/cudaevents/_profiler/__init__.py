"""The profiler, built on the core (and on CpuStreams).

- ``results``: samples, per-name statistics (``stats_of``, the one percentile rule), exports.
- ``timer``: ``Timer`` regions on recycled event pairs, harvested lazily.
- ``benchmark``: ``benchmark(fn)``, per-call times of a callable.
- ``torch_layers``: ``LayerTimer``, per-layer timing of PyTorch modules through hooks.
- ``tables``, ``plots``: the summaries and pictures of ``Results``.
- ``profile``: ``profile_timer()`` and ``cudaevents profile script.py``.
- ``ranks``: timings of every rank of a torch.distributed job gathered, compared and merged.
"""
