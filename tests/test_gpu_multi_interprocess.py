"""Interprocess events on two GPUs: a receiver's stream of GPU 1 waits for an event exported
from GPU 0 and copies what GPU 0 wrote; a receiver that does not see the exporter's GPU is
told so; the process pipeline with the producer on GPU 0 and the consumer on GPU 1."""

from __future__ import annotations

import pytest

import cudaevents as ce
from helpers import ipc_gpu_peers as peers
from helpers.spawning import joined

pytestmark = [pytest.mark.gpu, pytest.mark.multigpu]

torch = pytest.importorskip("torch")
pytest.importorskip("torch.multiprocessing")  # from here on, CUDA tensors pickle as CUDA IPC memory

TIMEOUT = 60.0
N = 1 << 20


def test_a_receiver_on_gpu_1_waits_for_an_event_of_gpu_0_and_copies_what_it_wrote(spawned):
    buffer = torch.zeros(N, dtype=torch.int32, device="cuda:0")
    torch.cuda._sleep(1000)
    peers.synced()
    child, inbox, outbox = spawned(peers.copy_to_gpu_1_and_sum, buffer)
    assert outbox.get(timeout=TIMEOUT) == "ready"
    stream = torch.cuda.Stream(0)
    for value in (3, 4):
        with torch.cuda.stream(stream):
            torch.cuda._sleep(300 * peers.CYCLES_PER_MS)  # the copy would read early without the wait
            buffer.fill_(value)
        event = ce.CudaEvent(0, interprocess=True).record(ce.as_stream(stream))
        inbox.put(event.ipc_handle())
        assert outbox.get(timeout=TIMEOUT) == value * N
        event.close()
    inbox.put(None)
    joined(child, timeout=TIMEOUT)


def test_a_receiver_that_does_not_see_the_exporters_gpu_is_told_which_and_why(spawned):
    event = ce.CudaEvent(0, interprocess=True).record(ce.GpuStream(0))
    child, inbox, outbox = spawned(peers.open_seeing_only_gpu_1)
    inbox.put(event.ipc_handle())
    name, message = outbox.get(timeout=TIMEOUT)
    assert name == "DeviceMismatchError", message
    assert "does not see" in message and "CUDA_VISIBLE_DEVICES=1" in message
    joined(child, timeout=TIMEOUT)


def test_the_pipeline_with_the_producer_on_gpu_0_and_the_consumer_on_gpu_1():
    from cudaevents._cli.pipeline import _run

    got = _run("events", 1, 4, 500, 1 << 16, 0, latencies=False, consumer_device=1)
    assert got["handoffs"] == 500
