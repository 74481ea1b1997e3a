"""A shared AtomicEvent between GPU streams of several processes on one GPU (spawn): a
consumer's stream waits for a producer in another process, and is let go when that producer
is killed. The scenarios run in tests/scripts/gpu_shared_counter.py; the host path is in
tests/test_shared_counter.py."""

from __future__ import annotations

import pytest
from helpers.subproc import run_script

pytestmark = pytest.mark.gpu


def scenario(*args: str):
    pytest.importorskip("torch")
    r = run_script("gpu_shared_counter.py", *args, timeout=240)
    assert r.returncode == 0 and f"ok {' '.join(args)}" in r.stdout, r


@pytest.mark.parametrize("consumers", [1, 2, 4])
def test_consumer_gpu_streams_wait_for_a_gpu_signal_of_another_process(consumers):
    """Each round the producer's GPU spins, writes the data, then signals; each consumer's
    stream waits for that value and copies the data: it must never copy early."""
    scenario("consumers", str(consumers))


def test_a_killed_signaller_lets_the_consumers_gpu_stream_go_and_its_host_wait_raise():
    scenario("killed")
