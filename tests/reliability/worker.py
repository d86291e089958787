"""A stream worker for the kill -9 scenarios: the kiosk KPI processor (or another, ``--processor``) in a
ProcessorRuntime, until killed.

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


def _feeder_outage():
    from services.meter.processors import FeederOutageProcessor

    return FeederOutageProcessor()


def _traffic():
    from services.traffic.processors import traffic_processor
    from services.traffic.settings import TrafficSettings

    processor = traffic_processor(TrafficSettings())
    # Hi-res events of a controller whose configuration was not folded yet wait 30 s of *arrival* (record) time,
    # then are measured without it. A consumer lagging the registry topic by more than that (these scenarios
    # pace it and kill it) would measure controllers configured long before without their detectors: a
    # sensitivity of the processor to lag, not what the scenarios check. Wait longer than any scenario lags.
    processor.hold_ms = 15 * 60_000
    return processor


def _dossier():
    from services.dossier.processors import kpi_processor

    return kpi_processor()


def _city():
    from services.city.processors import city_kpi_processor

    return city_kpi_processor()


#: the other processors, as ``ioc up`` builds them (run under the worker's ``--name``, paced by ``--pause``)
OTHER_PROCESSORS = {"feeder-outage": _feeder_outage, "traffic": _traffic, "dossier": _dossier, "city": _city}


def paced(processor, pause_s: float, source: str | None = None):
    """``processor`` stalling ``pause_s`` after each batch it folds (a slow consumer; kills land mid-stream);
    with ``source``, only after batches holding events of that CloudEvents source (a scenario's own, not the
    backlog other tests left on shared topics)."""
    fold = processor.apply_batch

    def apply_batch(events, state) -> None:
        fold(events, state)
        if pause_s and (source is None or any(e.source == source for e in events)):
            time.sleep(pause_s)  # blocking on purpose, as a CPU-bound batch blocks the loop

    processor.apply_batch = apply_batch
    return processor


async def main(args: argparse.Namespace) -> None:
    if args.processor == "meter":
        processor = PacedMeterProcessor(args.pause, args.name)
    elif args.processor in OTHER_PROCESSORS:
        processor = paced(OTHER_PROCESSORS[args.processor](), args.pause, args.source)
        processor.name = args.name
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
    parser.add_argument("--processor", choices=("kiosk", "meter", *OTHER_PROCESSORS), default="kiosk")
    configure_logging("reliability-worker", "INFO")
    asyncio.run(main(parser.parse_args()))
