"""The monitor's loop: NVML is read off the event loop, and the loop keeps polling through failures."""

from __future__ import annotations

import asyncio
import threading

from spawner.service.telemetry import GPUMonitor

from .fake_nvml import FakeNvml


class BlockingNvml(FakeNvml):
    """NVML whose memory call blocks until the test lets it go, as a slow driver would."""

    def __init__(self, cards) -> None:
        super().__init__(cards)
        self.entered = threading.Event()
        self.release = threading.Event()

    def nvmlDeviceGetMemoryInfo(self, card):
        self.entered.set()
        assert self.release.wait(timeout=30), "the event loop never ran while NVML was blocked"
        return super().nvmlDeviceGetMemoryInfo(card)


def test_a_blocked_nvml_call_leaves_the_event_loop_serving(ledger, nvml, clock):
    blocking = BlockingNvml(nvml.cards)
    monitor = GPUMonitor(ledger, nvml_library=blocking, clock=clock)

    async def run() -> None:
        polling = asyncio.create_task(monitor.poll())
        # Runs only if the poll handed NVML to a thread: on the loop, the poll would hold it until
        # the release, which only this coroutine gives.
        assert await asyncio.to_thread(blocking.entered.wait, 30)
        blocking.release.set()
        poll = await polling
        assert len(poll.sample.gpus) == 3

    asyncio.run(run())


def test_the_loop_keeps_polling_after_a_failed_sample_and_stops_cleanly(ledger, nvml, clock):
    failures = []

    class FailingOnce(FakeNvml):
        def nvmlDeviceGetUtilizationRates(self, card):
            if not failures:
                failures.append(card.uuid)
                raise RuntimeError("driver hiccup")
            return super().nvmlDeviceGetUtilizationRates(card)

    failing = FailingOnce(nvml.cards)
    monitor = GPUMonitor(ledger, nvml_library=failing, clock=clock, interval_s=0.01)

    async def run() -> None:
        monitor.start()
        for _ in range(3000):  # until the poll after the failed one (at most 30 s)
            if monitor.last_poll is not None:
                break
            await asyncio.sleep(0.01)
        await monitor.stop()

    asyncio.run(run())
    assert failures and monitor.last_poll is not None
    assert failing.initialised == 0  # NVML let go at stop
