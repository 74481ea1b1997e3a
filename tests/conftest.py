"""Shared fixtures, defined here once. The ``gpu``/``multigpu`` markers skip cleanly where no GPU
is present. Helpers shared with subprocess scripts live in tests/helpers, the scripts in
tests/scripts (neither is collected)."""

from __future__ import annotations

import threading

import pytest
from helpers.fake_driver import FakeDriver, bound
from helpers.fakes import FakeHandles
from helpers.latch import Latch

import cudaevents

collect_ignore = ["helpers", "scripts"]


def pytest_collection_modifyitems(config, items):
    reason = None if cudaevents.is_available() else "no CUDA GPU/driver here"
    count = cudaevents.device_count()
    for item in items:
        if reason and ("gpu" in item.keywords or "multigpu" in item.keywords):
            item.add_marker(pytest.mark.skip(reason=reason))
        elif "multigpu" in item.keywords and count < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs 2 GPUs, {count} present"))


# -- simulated pieces (no GPU needed) ------------------------------------------------------------
@pytest.fixture
def fake():
    """Stand-in native event handles (helpers.fakes.FakeHandles)."""
    return FakeHandles()


@pytest.fixture(params=["compiled", "pure"])
def hot_path(request):
    """Each test that uses it runs twice: on the compiled hot path and on the pure-Python one
    (the compiled run is skipped, saying so, where the extension was not built)."""
    from cudaevents._core import compiled, driver

    if request.param == "compiled" and compiled._hot is None:
        pytest.skip(compiled._missing)
    before, contexts = driver._d, driver._context_ints
    compiled.use(request.param == "compiled")
    yield request.param
    # back to the driver bound before the test, whether or not a simulated one is still bound
    # now (a test's own monkeypatch may be undone after this): never the simulation's entry points
    compiled._enabled = None
    compiled.bind_driver(before, driver._raise_code, contexts)


@pytest.fixture
def fake_pool(fake, hot_path):
    """An EventPool whose handles come from ``fake``, on each hot path."""
    return cudaevents.EventPool(create=fake.create, destroy=fake.destroy)


@pytest.fixture
def fake_driver(hot_path, monkeypatch):  # this order: monkeypatch is undone before hot_path
    """The simulated driver (helpers.fake_driver.FakeDriver), bound for this test, once with
    the compiled hot path calling it through C entry points and once in pure Python. Its GPU
    runs only when told (``fake_driver.run(stream)``); set ``keeps_up = True`` for one that
    completes every record at once."""
    from cudaevents._core import compiled

    with bound(monkeypatch, FakeDriver()) as fake:
        assert compiled.active() == (hot_path == "compiled"), compiled.describe()
        yield fake


# -- counter backends ----------------------------------------------------------------------------
@pytest.fixture
def host_backend(monkeypatch):
    """Counters on the host backend (the CI path; also on a machine with a GPU)."""
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", "host")


@pytest.fixture
def gpu_backend(request, monkeypatch):
    """Counters on the backend given by ``@pytest.mark.parametrize("gpu_backend", [...], indirect=True)``."""
    monkeypatch.setenv("CUDAEVENTS_ATOMIC_BACKEND", request.param)
    return request.param


# -- CPU streams, gates, workers -------------------------------------------------------------------
@pytest.fixture
def cpu_streams():
    """CpuStream factory: ``cpu_streams(n=1, name=None)`` makes a list of ``n`` (named ``name``,
    or ``name-0``, ``name-1``, ... when there are several); all are closed at teardown (an
    error of theirs reported)."""
    made = []

    def make(n=1, name=None):
        names = [name] if n == 1 else [None if name is None else f"{name}-{i}" for i in range(n)]
        new = [cudaevents.CpuStream(x) for x in names]
        made.extend(new)
        return new

    yield make
    for s in made:
        s.close(timeout=10)


@pytest.fixture
def cpu(cpu_streams):
    """CpuStream factory: ``cpu(name=None)`` makes one (closed at teardown)."""
    return lambda name=None: cpu_streams(1, name)[0]


@pytest.fixture
def gates():
    """threading.Events that hold CPU streams back; all are set at teardown, so no thread is
    left blocked when a test fails."""
    made = []

    def make():
        g = threading.Event()
        made.append(g)
        return g

    yield make
    for g in made:
        g.set()


@pytest.fixture
def worker():
    w = cudaevents.Worker()
    yield w
    w.close(timeout=60)


# -- GPU ---------------------------------------------------------------------------------------------
@pytest.fixture
def pool():
    """A fresh EventPool of real events, cleared at teardown."""
    p = cudaevents.EventPool()
    yield p
    p.clear()


@pytest.fixture
def stream():
    s = cudaevents.GpuStream(0)
    yield s
    s.synchronize(timeout=30)
    s.close()


@pytest.fixture
def gpu_streams():
    """GpuStream factory: ``gpu_streams(n=1)`` makes a list of ``n`` on device 0; all are
    synchronized and closed at teardown."""
    made = []

    def make(n=1):
        new = [cudaevents.GpuStream(0) for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for s in made:
        s.synchronize(timeout=60)
        s.close()


@pytest.fixture
def latch(stream):  # depends on `stream` so that it is released before that stream is synchronized
    """A helpers.latch.Latch on device 0: ``latch.block(s)``, ``latch.release()``; released at
    teardown, and its slot handed back once the streams it blocked have passed it."""
    lt = Latch()
    yield lt
    lt.close()


@pytest.fixture
def buffers():
    """Device memory factory: ``buffers(nbytes, device=0)`` returns a pointer; all are freed at
    teardown."""
    from cudaevents._core import driver

    allocated = []

    def alloc(nbytes, device=0):
        ptr = driver.mem_alloc(device, nbytes)
        allocated.append(ptr)
        return ptr

    yield alloc
    for ptr in allocated:
        driver.mem_free(ptr)


@pytest.fixture
def spawned():
    """``spawned(target, *args) -> (process, inbox, outbox)``: children started with the
    'spawn' method (helpers.spawning.with_queues); those still alive at the end are killed."""
    from helpers.spawning import T, with_queues

    started = []

    def start(target, *args):
        child, inbox, outbox = with_queues(target, *args)
        started.append(child)
        return child, inbox, outbox

    yield start
    for child in started:
        if child.is_alive():
            child.kill()
        child.join(T)
