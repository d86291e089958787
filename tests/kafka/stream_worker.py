"""A ``city-kpi`` or ``traffic-signals`` worker process for the scaling scenarios on Apache Kafka.

Run by :func:`tests.kafka.city_traffic_support.worker` (a ``tests.reliability.harness.Worker`` pointed at this
script): the processor as ``ioc up`` builds it, under a consumer group and changelog of the test's own, ticking
often so that outputs follow folds quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from services.city.processors import city_kpi_processor
from services.traffic.processors import traffic_processor
from services.traffic.settings import TrafficSettings
from shared.config import KafkaSettings
from shared.logging import configure_logging
from shared.stream.processor import StreamProcessor
from shared.stream.runtime import ProcessorRuntime


def build(kind: str, name: str) -> StreamProcessor:
    processor: StreamProcessor = (
        city_kpi_processor() if kind == "city" else traffic_processor(TrafficSettings())
    )
    processor.name = name
    processor.tick_seconds = 0.2  # type: ignore[misc]
    return processor


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap)  # other IOC_KAFKA_* settings from the environment
    processor = build(args.processor, args.name)
    async with ProcessorRuntime(processor, kafka, driver=args.driver, max_records=args.max_records).running():
        print("worker running", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--source", default="")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--max-records", type=int, default=500)
    parser.add_argument("--driver", default="faust")
    parser.add_argument("--processor", choices=("city", "traffic"), required=True)
    configure_logging("kafka-stream-worker", "INFO")
    asyncio.run(main(parser.parse_args()))
