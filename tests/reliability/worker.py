"""A stream worker for the kill -9 scenarios: the kiosk (or meter) KPI processor in a ProcessorRuntime, until killed.

Run as a child process by ``tests/reliability/harness.py`` (``Worker``). ``--pause`` slows each batch down so
that a kill lands in the middle of the stream rather than after it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from services.kiosk.processors import KioskKpiProcessor
from services.meter.processors import MeterKpiProcessor
from shared.config import KafkaSettings
from shared.logging import configure_logging
from shared.stream.runtime import ProcessorRuntime


class PacedKioskProcessor(KioskKpiProcessor):
    """The real kiosk processor, sleeping after each batch (a slow consumer)."""

    def __init__(self, pause_s: float, **kw):
        super().__init__(**kw)
        self.pause_s = pause_s

    def apply_batch(self, events, state) -> None:
        """Fold the batch as the kiosk processor does, then stall."""
        super().apply_batch(events, state)
        if self.pause_s:
            time.sleep(self.pause_s)  # blocking on purpose: a CPU-bound batch blocks the loop the same way


class PacedMeterProcessor(MeterKpiProcessor):
    """The real meter KPI processor under a name of its own (consumer group, changelog), stalling after each
    batch."""

    tick_seconds = 0.2
    emit_interval_seconds = 0.2

    def __init__(self, pause_s: float, name: str):
        super().__init__()
        self.name = name
        self.pause_s = pause_s

    def apply_batch(self, events, state) -> None:
        super().apply_batch(events, state)
        if self.pause_s:
            time.sleep(self.pause_s)


async def main(args: argparse.Namespace) -> None:
    if args.processor == "meter":
        processor = PacedMeterProcessor(args.pause, args.name)
    else:
        processor = PacedKioskProcessor(
            args.pause,
            heartbeat_timeout_s=3600,
            kpi_interval_s=0.3,
            tick_seconds=0.2,
            name=args.name,
            source=args.source,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap)  # other IOC_KAFKA_* settings from the environment
    async with ProcessorRuntime(processor, kafka, driver=args.driver, max_records=args.max_records).running():
        print("worker running", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--max-records", type=int, default=20000)
    parser.add_argument("--driver", default="faust")
    parser.add_argument("--processor", choices=("kiosk", "meter"), default="kiosk")
    configure_logging("reliability-worker", "INFO")
    asyncio.run(main(parser.parse_args()))
