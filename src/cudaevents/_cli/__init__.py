"""The ``cudaevents`` command line: ``main`` (info, demo, bench, profile) and ``demo``."""
