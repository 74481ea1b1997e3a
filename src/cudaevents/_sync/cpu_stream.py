"""CPU streams: one thread running enqueued callables in order, like a GPU stream does kernels."""

from __future__ import annotations

import itertools
import logging

from .._core.errors import ClosedError
from .._core.wait import check_timeout
from .runner import Runner

__all__ = ["CpuStream"]

_log = logging.getLogger("cudaevents")
_names = itertools.count()


class _Failure:
    """The first error of a stream's tasks, and whether a caller has seen it."""

    __slots__ = ("error", "traceback", "reported", "name")

    def __init__(self, name: str):
        self.error = None
        self.traceback = None
        self.reported = False
        self.name = name

    def record(self, exc: BaseException, fn) -> None:  # runs on the stream's thread
        if self.error is None:
            self.error = exc
            self.traceback = exc.__traceback__
        else:  # only the first error is raised by synchronize(); log the others
            _log.error("task %r on %s raised after an earlier failure", fn, self.name, exc_info=exc)

    def report_unretrieved(self) -> None:  # the stream's last item
        if self.error is not None and not self.reported:
            self.reported = True
            _log.error("a task on %s raised and no synchronize() reported it", self.name,
                       exc_info=(type(self.error), self.error, self.traceback))


class CpuStream:
    """A thread that runs enqueued callables one at a time, in order.

    The first exception a task raises is kept: :meth:`synchronize` re-raises it, every time,
    from then on (the stream stays failed, as a CUDA context does after a sticky error), and
    later tasks' exceptions are logged to the ``cudaevents`` logger, as is the first one if
    the stream is closed or dropped before any synchronize() raised it, so none is lost.
    Later tasks still run. Tasks still queued when the interpreter exits are dropped.

    A stream's thread does not survive ``fork()``: in a forked child, a stream created before
    the fork refuses :meth:`enqueue` and :meth:`synchronize` with :class:`ClosedError` (create a
    new stream there); :meth:`close` raises it too when tasks were unfinished at the fork
    (they never run in the child; the parent's stream runs them), and otherwise does nothing.

    Args:
        name: name of the thread, for debuggers and logs.
    """

    __slots__ = ("_runner", "_failure", "__weakref__")

    def __init__(self, name: str | None = None):
        name = name or f"cudaevents-cpu-stream-{next(_names)}"
        self._failure = _Failure(name)
        self._runner = Runner(name, self._failure.record)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._runner.closed

    @property
    def error(self) -> BaseException | None:
        """The first exception a task raised, or ``None``."""
        return self._failure.error

    @property
    def thread(self):
        """The stream's ``threading.Thread``."""
        return self._runner.thread

    def __repr__(self) -> str:
        r = self._runner
        state = "closed" if r.closed else "open"
        return f"<CpuStream {r.thread.name} {state} pending={r.pending()}>"

    def enqueue(self, fn, /, *args, **kwargs) -> None:
        """Run ``fn(*args, **kwargs)`` on the stream's thread after everything enqueued before.

        Raises:
            TypeError: ``fn`` is not callable.
            ClosedError: the stream was closed, or this process was forked after it was created.
        """
        if not callable(fn):
            raise TypeError(f"CpuStream.enqueue() needs a callable, got {type(fn).__name__}")
        if not self._runner.submit(fn, args, kwargs):
            raise self._closed_error()

    def synchronize(self, timeout: float | None = None) -> None:
        """Wait until every task enqueued before this call has run.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            RuntimeError: called from one of this stream's own tasks (it would wait forever).
            ClosedError: called in a process forked after the stream was created (its thread
                does not exist there).
            BaseException: the first exception any task of this stream raised.
        """
        timeout = check_timeout(timeout)
        if self._runner.orphaned:
            raise self._closed_error()
        if self._runner.on_thread():
            raise RuntimeError(
                "CpuStream.synchronize() was called from a task of the same stream, which would wait forever; "
                "synchronize from another thread, or enqueue the follow-up work as a later task"
            )
        unfinished = self._runner.wait(timeout)
        if unfinished:
            raise TimeoutError(f"CpuStream.synchronize() timed out after {timeout:g} s with {unfinished} task(s) unfinished")
        f = self._failure
        if f.error is not None:
            f.reported = True
            raise f.error.with_traceback(f.traceback)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new tasks, let the queued ones finish, and stop the thread.

        Closing twice is fine. Task errors are not raised here; :meth:`synchronize` or
        :attr:`error` report them. Closing from one of the stream's own tasks returns at
        once; the thread stops after the queued tasks.

        Raises:
            TimeoutError: the queued tasks did not finish within ``timeout`` seconds (the
                thread still stops after them).
            ClosedError: called in a process forked after the stream was created while tasks
                were unfinished (they never run there).
        """
        timeout = check_timeout(timeout)
        r = self._runner
        if r.orphaned:
            unfinished = r.pending()
            if unfinished:
                raise ClosedError(
                    f"this CpuStream was created before os.fork() and had {unfinished} task(s) unfinished then; "
                    "its thread does not exist in this process, so they never run here (the parent's stream "
                    "runs them): create a new CpuStream here for work of this process"
                )
            return  # nothing to finish and no thread to stop: as closed as it gets
        r.submit(self._failure.report_unretrieved)
        r.stop()
        if not r.on_thread() and not r.join(timeout):
            raise TimeoutError(f"CpuStream.close() timed out after {timeout:g} s with tasks still running")

    def __enter__(self) -> "CpuStream":
        if self._runner.closed:
            raise self._closed_error()
        return self

    def _closed_error(self) -> ClosedError:
        if self._runner.orphaned:
            return ClosedError(
                "this CpuStream was created before os.fork(); its thread does not exist in this process: "
                "create a new one here"
            )
        return ClosedError("this CpuStream was closed; create a new CpuStream to run more tasks")

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        r = getattr(self, "_runner", None)
        if r is not None:
            r.stop_from_finalizer((self._failure.report_unretrieved, (), {}))
