"""``as_stream()`` of a broken ``__cuda_stream__`` object, named by ``sys.argv[1]`` (a label of
NOT_STREAMS_PENDING in tests/reliability/test_bad_input.py), in a process of its own: on a GPU
machine the handle may reach the driver, which may crash on it. Prints ``ExceptionName:
message``, or ``no error``."""

import sys

from helpers.fakes import StreamProtocol, UnreadableProtocol

from cudaevents import as_stream

OBJECTS = {
    "protocol-raises": lambda: StreamProtocol(RuntimeError("boom")),
    "protocol-unreadable": UnreadableProtocol,
    "protocol-bool-handle": lambda: StreamProtocol((0, True)),
    "protocol-negative-handle": lambda: StreamProtocol((0, -5)),
}

obj = OBJECTS[sys.argv[1]]()
try:
    as_stream(obj)
except BaseException as exc:  # noqa: BLE001 - printed for the test
    print(type(exc).__name__, exc, sep=": ")
else:
    print("no error")
