"""CPU of authenticated event sources (``shared/contracts/provenance.py``) per event, in this process, no broker.

    python -m bench.provenance_cpu [events]

``events`` meter readings encoded as IOC publishes them. Timed: signing (what the publisher adds per event),
verifying (what each consumer adds per record), and ``decode_batch`` on signed and unsigned records (the
positional header fast path must still apply with the two provenance headers). Each is run 5 times; the
minimum CPU per event is printed, with keyed BLAKE2b against HMAC-SHA256 over the same bytes for reference.
"""

from __future__ import annotations

import base64
import copy
import hmac
import sys
import time

from aiokafka.structs import ConsumerRecord, TopicPartition

from shared.contracts import EVENT_TYPES
from shared.contracts.cloudevents import decode_batch, encode_many
from shared.contracts.provenance import EventSigner, EventVerifier, parse_keys

TOPIC = "ioc.meter.readings"


def _events(n: int):
    et = EVENT_TYPES["ioc.meter.reading.recorded.v1"]
    example = et.examples[0]
    payloads = [{**example, "meter_id": f"MTR-{i:06d}", "value": 1000.0 + i} for i in range(n)]
    return encode_many(et, payloads, source="/ioc/meter")


def _records(events) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(TOPIC, 0, i, 0, 0, e.key, e.value, None, len(e.key), len(e.value), tuple(e.headers))
        for i, e in enumerate(events)
    ]


def _best(fn, n: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best / n * 1e6


def main(n: int = 50_000) -> None:
    keys = parse_keys("meter=" + base64.b64encode(b"k" * 32).decode())
    signer, verifier = EventSigner(keys), EventVerifier(keys)
    plain = _events(n)
    signed = copy.deepcopy(plain)
    signer.sign(signed)
    signed_records, plain_records = _records(signed), _records(plain)
    tp = TopicPartition(TOPIC, 0)

    def sign():
        signer.sign(copy.copy(e) for e in plain)  # headers lists re-signed in place: cost of the MAC path

    sign_us = _best(lambda: signer.sign(signed), n)
    verify_us = _best(lambda: verifier.verify(signed_records, TOPIC, "bench"), n)
    decode_signed = _best(lambda: decode_batch(signed_records, tp), n)
    decode_plain = _best(lambda: decode_batch(plain_records, tp), n)
    msgs = [b"\0".join((TOPIC.encode(), e.key, e.value, *[v for _, v in e.headers])) for e in plain]
    secret = b"k" * 32
    hmac_us = _best(lambda: [hmac.digest(secret, m, "sha256") for m in msgs], n)
    import hashlib

    blake_us = _best(lambda: [hashlib.blake2b(m, key=secret, digest_size=16).digest() for m in msgs], n)
    assert verifier.verify(signed_records, TOPIC, "bench")[1] == []
    print(f"events: {n} meter readings, {len(plain[0].value)} bytes of payload each")
    print(f"sign (publisher):            {sign_us:6.2f} µs/event")
    print(f"verify (consumer):           {verify_us:6.2f} µs/event")
    print(f"decode_batch, signed:        {decode_signed:6.2f} µs/event")
    print(f"decode_batch, unsigned:      {decode_plain:6.2f} µs/event")
    print(f"MAC alone, keyed BLAKE2b:    {blake_us:6.2f} µs/event")
    print(f"MAC alone, HMAC-SHA256:      {hmac_us:6.2f} µs/event")
    _ = sign


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
