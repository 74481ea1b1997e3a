"""Helpers shared by the tests and by the scripts they run in subprocesses (tests/scripts).

Importable as ``helpers`` from test modules (pytest puts ``tests/`` on ``sys.path`` for
``tests/conftest.py``) and from subprocesses started with :mod:`helpers.subproc`, which put
``tests/`` on their ``PYTHONPATH``. Nothing here imports pytest at import, so scripts can use it.

- :mod:`helpers.fake_driver`: the simulated CUDA driver (a stand-in for ``cuda.bindings.driver``).
- :mod:`helpers.fakes`: stand-ins below and beside the driver: native event handles for an
  ``EventPool``, GPU counter cells, stream-like objects of other libraries.
- :mod:`helpers.latch`: a GPU stream held on a host-controlled word.
- :mod:`helpers.subproc`: the one way to run Python in a child process, with a hard timeout.
- :mod:`helpers.forking`: fork a child inside a script and wait for it with a deadline.
- :mod:`helpers.threads`: waiter threads that record what their call raised.
"""
