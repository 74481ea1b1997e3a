"""Interprocess events on one GPU, across spawned processes: a consumer never reads a buffer
before the producer's fill behind a long GPU wait (and, as a control, does without the wait);
naive recycling of an exported event ties a receiver's wait to unrelated work, the recycling
rule does not;
the two-process pipeline with 2 and 4 consumers, 1,000 hand-offs verified; a killed exporter
with consumers waiting; either side exiting with events exported."""

from __future__ import annotations

import time

import pytest

import cudaevents as ce
from cudaevents._core import interprocess
from helpers import ipc_gpu_peers as peers
from helpers.spawning import joined

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU/driver here", allow_module_level=True)

pytest.importorskip("torch.multiprocessing")  # from here on, CUDA tensors pickle as CUDA IPC memory

TIMEOUT = 60.0
N = 1 << 20
SLEEP_MS = 1000  # the producer's fill waits this long behind a GPU sleep (other tests may load the GPU)


def _warm(buffer):
    torch.cuda._sleep(1000)
    buffer.fill_(1)
    buffer.zero_()
    peers.synced()


def _fill_behind_a_sleep(buffer, value: int, stream) -> None:
    with torch.cuda.stream(stream):
        torch.cuda._sleep(SLEEP_MS * peers.CYCLES_PER_MS)
        buffer.fill_(value)


def test_a_consumer_waiting_on_the_event_never_reads_before_the_fill_and_without_the_wait_it_does(spawned):
    buffer = torch.zeros(N, dtype=torch.int32, device="cuda")
    _warm(buffer)
    child, inbox, outbox = spawned(peers.sum_when_told, [buffer])
    assert outbox.get(timeout=TIMEOUT) == "ready"
    stream = torch.cuda.Stream()
    for value, wait in ((7, True), (9, False)):
        buffer.zero_()
        peers.synced()
        _fill_behind_a_sleep(buffer, value, stream)
        event = ce.CudaEvent(0, interprocess=True).record(ce.as_stream(stream))
        inbox.put((event.ipc_handle(), wait))
        if wait:
            inbox.put("go")
        (total,) = outbox.get(timeout=TIMEOUT)
        if wait:
            assert total == value * N  # waited on the device for the fill
        else:
            assert total == 0  # the control: without the wait it reads the buffer before the fill
        peers.synced(stream)
        event.close()
    inbox.put(None)
    joined(child, timeout=TIMEOUT)


def test_naive_recycling_of_an_exported_event_ties_the_receiver_to_unrelated_work_and_the_rule_does_not(spawned):
    """The exporter records and sends an event after a hand-off's fill, then more work starts
    (a 1 s spin, then it writes another buffer) with an event of its own. Had the pool
    given the sent event back for that work (naive recycling), the receiver's later wait would
    wait for that unrelated work too: it sees the other buffer written. With the rule the
    event is held, the unrelated work gets another one, and the receiver reads the other
    buffer before that work writes it."""
    mine = torch.zeros(N, dtype=torch.int32, device="cuda")
    unrelated = torch.zeros(N, dtype=torch.int32, device="cuda")
    _warm(mine)
    child, inbox, outbox = spawned(peers.sum_when_told, [mine, unrelated])
    assert outbox.get(timeout=TIMEOUT) == "ready"
    busy, late = torch.cuda.Stream(), torch.cuda.Stream()
    sums = {}
    for how in ("naive", "rule"):
        mine.zero_()
        unrelated.zero_()
        peers.synced()
        with torch.cuda.stream(busy):
            mine.fill_(5)
        event = ce.CudaEvent(0, interprocess=True).record(ce.as_stream(busy))
        native = event.handle
        inbox.put((event.ipc_handle(), True))
        if how == "naive":
            reused = event  # what a pool recycling at close would hand the next work
        else:
            event.close()
            reused = ce.CudaEvent(0, interprocess=True)
            assert reused.handle != native  # held for the receiver; the pool made another
        _fill_behind_a_sleep(unrelated, 9, late)
        reused.record(ce.as_stream(late))
        inbox.put("go")  # only now does the receiver wait
        sums[how] = outbox.get(timeout=TIMEOUT)
        peers.synced(late)
        reused.close()
    inbox.put(None)
    joined(child, timeout=TIMEOUT)
    assert sums["naive"] == [5 * N, 9 * N]  # it waited for the unrelated work too
    assert sums["rule"] == [5 * N, 0]  # it waited for its hand-off only
    assert interprocess.stats()["held"] == 0  # released by the receiver, back in the pool


@pytest.mark.parametrize("mode", ["events", "counter"])
@pytest.mark.parametrize("consumers", [2, 4])
def test_the_pipeline_hands_over_1000_buffers_in_order_with_none_lost(consumers, mode):
    from cudaevents._cli.pipeline import _run

    got = _run(mode, consumers, 4, 1000, 1 << 16, 0, latencies=False)
    assert got["handoffs"] == 1000 and got["throughput_per_s"] > 0
    assert interprocess.stats()["unreleased"] == 0


def test_the_demo_runs_every_mode_and_the_one_process_floor_with_its_buffers_verified():
    from cudaevents._cli.pipeline import run_pipeline

    lines = []
    report = run_pipeline(lines.append, handoffs=60, consumers=2, elements=1 << 16, policy="yield")
    assert list(report["modes"]) == ["host", "events", "counter"]
    for figures in [*report["modes"].values(), report["one_process"]]:
        assert 0 < figures["latency_us_p50"] <= figures["latency_us_p99"]
    assert "host waits: yield" in lines[0] and lines[1].startswith("MPS: ")
    assert [line.split()[0] for line in lines[3:7]] == ["host", "events", "counter", "1"]


def test_consumers_waiting_on_a_killed_exporter_get_peer_died_within_a_second(spawned):
    other, to_other, from_other = spawned(peers.wait_on_the_host)
    producer, to_producer, from_producer = spawned(peers.export_behind_a_sleep, 3000.0, [to_other])
    mine = from_producer.get(timeout=TIMEOUT)
    assert from_other.get(timeout=TIMEOUT) == "waiting"
    stream = ce.GpuStream(0)
    mine.wait(stream)  # a GPU wait enqueued here on the exporter's event
    assert not mine.query()  # the exporter's sleep is still running
    producer.kill()
    killed_at = time.time()
    to_other.put(killed_at)
    with pytest.raises(ce.PeerError, match=f"pid {producer.pid}"):
        mine.synchronize(timeout=TIMEOUT)
    here = time.time() - killed_at
    name, message, there = from_other.get(timeout=TIMEOUT)
    assert name == "PeerError", message
    assert here < 3 and there < 3, (here, there)  # "within a second", with slack for a loaded host
    # what the GPU does with the wait enqueued on the dead exporter's event: reported, not assumed
    try:
        stream.synchronize(timeout=10)
        fate = "completed"
    except TimeoutError:
        fate = "still waiting after 10 s"
    print(f"\nPeerError after {here:.3f} s here, {there:.3f} s in the other consumer; "
          f"the GPU wait on the dead exporter's event: {fate}")


def test_an_exporter_exiting_with_sends_out_exits_cleanly_and_its_receivers_are_told(spawned):
    producer, to_producer, from_producer = spawned(peers.export_behind_a_sleep, 1.0, [])
    sent = from_producer.get(timeout=TIMEOUT)
    sent.synchronize(timeout=TIMEOUT)
    to_producer.put("exit")
    joined(producer, timeout=TIMEOUT)
    with pytest.raises(ce.PeerError, match="has ended"):
        sent.wait(ce.GpuStream(0))


def test_a_receiver_exiting_without_releasing_releases_what_it_dropped(spawned):
    event = ce.CudaEvent(0, interprocess=True).record(ce.GpuStream(0))
    child, inbox, outbox = spawned(peers.receive_wait_and_exit)
    inbox.put(event.ipc_handle())
    inbox.put(event.ipc_handle())
    assert outbox.get(timeout=TIMEOUT) == "waited"
    joined(child, timeout=TIMEOUT)
    event.close()
    deadline = time.monotonic() + TIMEOUT
    while interprocess.stats()["held"]:
        assert time.monotonic() < deadline, interprocess.stats()
        time.sleep(0.01)
