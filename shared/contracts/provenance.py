"""Authenticated event sources: who produced an event, checked by every consumer.

Each producing principal (the owner of a catalogue topic: ``meter``, ``traffic``, ``kiosk``, ``dossier``,
``city``, ``platform``) has a secret key. The publisher appends two headers to every event it publishes on a
topic whose owner's key it holds: ``ioc_signer`` (the key id, ``<owner>`` or ``<owner>#<version>`` for
rotation) and ``ioc_mac``, a keyed BLAKE2b (RFC 7693) tag of 16 bytes over the topic, the record key, the
value and every header before it (CloudEvents attributes included), in order. Consumers check that the
signer is the owner of the topic the record was read from and that the tag matches; records failing go to the
dead-letter topic with the reason and are counted in ``ioc_events_unauthenticated_total``.

Keyed BLAKE2b rather than HMAC-SHA256: the same kind of guarantee (a PRF keyed with a 256-bit secret) at about
half the CPU, which matters at ~100k events/s per processor (``bench/provenance_cpu.py``).

Keys come from ``IOC_EVENT_KEYS`` (``id=base64,id=base64``) and/or ``IOC_EVENT_KEYS_FILE`` (a JSON object
``{"id": "base64"}``, mode 0600). Without any key, nothing is signed and nothing is checked (the development
default of a bare checkout; ``ioc up`` generates keys). A symmetric key verifies and signs alike: a process
holding an owner's key could produce as that owner, so each deployment gives a process only the keys of the
owners it produces for and consumes from (docs/guarantees.md, "Event-bus threat model").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Sequence
from functools import lru_cache
from hmac import compare_digest
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from shared.contracts.base import TOPICS

log = logging.getLogger(__name__)

SIGNER_HEADER = "ioc_signer"
MAC_HEADER = "ioc_mac"
MAC_BYTES = 16
KEY_BYTES = 32

EVENTS_UNAUTHENTICATED = Counter(
    "ioc_events_unauthenticated_total",
    "Records refused because their producer could not be authenticated (dead-lettered)",
    ["consumer", "topic", "reason"],
)

_blake2b = hashlib.blake2b


class ProvenanceError(ValueError):
    """Key material that cannot be used (malformed, too short)."""


def principal_of(key_id: str) -> str:
    """The producing principal a key id stands for (``meter#2027`` → ``meter``)."""
    return key_id.partition("#")[0]


def _mac(
    secret: bytes, topic: bytes, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
) -> bytes:
    """The tag over topic, key, value, header names and header values (in order). Separators cannot be
    confused with content in what IOC signs: producers sign their own records only, whose values are JSON
    and validated ids (no NUL). Raises ``TypeError`` for a header without a value (never signed)."""
    names, values = zip(*headers, strict=True)
    return _blake2b(
        b"\0".join((topic, key, value, "\0".join(names).encode(), *values)), key=secret, digest_size=MAC_BYTES
    ).digest()


def parse_keys(inline: str | None = None, file: str | os.PathLike | None = None) -> dict[str, bytes]:
    """Key ids → secrets from ``IOC_EVENT_KEYS``-style text and/or a JSON keys file (file entries first)."""
    raw: list[tuple[str, str]] = []
    if file:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ProvenanceError("the event keys file must hold a JSON object {key id: base64 secret}")
        raw += [(str(k), str(v)) for k, v in data.items()]
    for item in (inline or "").split(","):
        if item.strip():
            key_id, sep, secret = item.strip().partition("=")
            if not sep:
                raise ProvenanceError("IOC_EVENT_KEYS entries are key_id=base64secret")
            raw.append((key_id.strip(), secret.strip()))
    keys: dict[str, bytes] = {}
    for key_id, text in raw:
        try:
            key_bytes = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=False)
        except (binascii.Error, ValueError):
            raise ProvenanceError(f"event key {key_id!r} is not base64") from None
        if len(key_bytes) < 16:
            raise ProvenanceError(f"event key {key_id!r} is shorter than 16 bytes")
        keys[key_id] = key_bytes[:64]  # BLAKE2b keys are at most 64 bytes
    return keys


def generate_keys(principals: Sequence[str]) -> dict[str, str]:
    """A fresh keys-file content: one random 256-bit key per principal (base64url)."""
    return {p: base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode() for p in principals}


def producing_principals() -> list[str]:
    """Owners of the catalogue's topics: the principals that need a key."""
    return sorted({t.owner for t in TOPICS.values() if not t.internal})


class EventSigner:
    """Signs encoded events for the topics whose owner's key this process holds."""

    def __init__(self, keys: dict[str, bytes]):
        self._by_principal: dict[str, tuple[bytes, bytes]] = {}
        for key_id, secret in keys.items():  # the first key of a principal signs; all of them verify
            self._by_principal.setdefault(principal_of(key_id), (key_id.encode(), secret))
        self._by_topic: dict[str, tuple[bytes, bytes, bytes] | None] = {}

    def _for_topic(self, topic: str) -> tuple[bytes, bytes, bytes] | None:
        try:
            return self._by_topic[topic]
        except KeyError:
            spec = TOPICS.get(topic)
            found = self._by_principal.get(spec.owner) if spec is not None and not spec.internal else None
            entry = self._by_topic[topic] = None if found is None else (topic.encode(), *found)
            return entry

    def sign(self, events: Sequence[Any]) -> None:
        """Append the signer and MAC headers to each :class:`EncodedEvent` (in place; a signed event is signed
        again, e.g. a re-published one)."""
        for ev in events:
            entry = self._by_topic.get(ev.topic) if ev.topic in self._by_topic else self._for_topic(ev.topic)
            if entry is None:
                continue
            topic_b, key_id, secret = entry
            headers = ev.headers
            if len(headers) >= 2 and headers[-1][0] == MAC_HEADER:
                del headers[-2:]
            headers.append((SIGNER_HEADER, key_id))
            headers.append((MAC_HEADER, _mac(secret, topic_b, ev.key, ev.value, headers)))


class EventVerifier:
    """Checks each consumed record's producer against its topic's owner (``verify``)."""

    checks = True

    def __init__(self, keys: dict[str, bytes]):
        self._keys = {key_id.encode(): (principal_of(key_id), secret) for key_id, secret in keys.items()}
        self._topics: dict[str, tuple[bytes, str | None]] = {}

    def _topic(self, topic: str) -> tuple[bytes, str | None]:
        entry = self._topics.get(topic)
        if entry is None:
            spec = TOPICS.get(topic)
            # Internal topics (changelogs) are never read through here; an unknown topic has no owner.
            entry = self._topics[topic] = (topic.encode(), None if spec is None else spec.owner)
        return entry

    def reason(self, record: Any, topic: str) -> str | None:
        """Why ``record`` (read from ``topic``) is not authenticated, or ``None`` when it is."""
        topic_b, owner = self._topic(topic)
        hs = record.headers
        if not hs or len(hs) < 2 or hs[-1][0] != MAC_HEADER or hs[-2][0] != SIGNER_HEADER:
            return "unsigned"
        key_id = hs[-2][1] or b""
        entry = self._keys.get(key_id)
        if entry is None:
            return "unknown_key"
        principal, secret = entry
        if principal != owner:
            return "wrong_producer"
        try:
            expected = _mac(secret, topic_b, record.key or b"", record.value or b"", hs[:-1])
        except TypeError:  # a header without a value: IOC never signs one
            return "bad_mac"
        if not compare_digest(expected, hs[-1][1] or b""):
            return "bad_mac"
        return None

    def verify(
        self, records: Sequence[Any], topic: str, consumer: str
    ) -> tuple[Sequence[Any], list[tuple[Any, str]]]:
        """``(authenticated records, [(record, dead-letter reason), ...])``; the input itself when all pass.

        The loop is :meth:`reason` inlined for records signed by the topic's owner (the hot path)."""
        topic_b, owner = self._topic(topic)
        keys = self._keys
        join = b"\0".join
        blake2b = _blake2b
        bad = None
        for i, r in enumerate(records):
            hs = r.headers
            try:
                (signer_name, key_id), (mac_name, tag) = hs[-2:]
                principal, secret = keys[key_id]
                names, values = zip(*hs[:-1], strict=True)
                ok = (
                    mac_name == MAC_HEADER
                    and signer_name == SIGNER_HEADER
                    and principal == owner
                    and compare_digest(
                        blake2b(
                            join((topic_b, r.key, r.value, "\0".join(names).encode(), *values)),
                            key=secret,
                            digest_size=MAC_BYTES,
                        ).digest(),
                        tag,
                    )
                )
            except (TypeError, ValueError, KeyError):  # too few headers, unknown key id, a null part
                ok = False
            if not ok:
                bad = i
                break
        if bad is None:
            return records, []
        good = list(records[:bad])
        refused: list[tuple[Any, str]] = []
        for r in records[bad:]:
            why = self.reason(r, topic)
            if why is None:
                good.append(r)
                continue
            EVENTS_UNAUTHENTICATED.labels(consumer, topic, why).inc()
            refused.append((r, f"unauthenticated producer ({why}): {topic} accepts events of {owner!r} only"))
        return good, refused


class NoVerification:
    """What consumers use when no event keys are configured: every record passes (development only)."""

    checks = False

    @staticmethod
    def verify(records: Sequence[Any], topic: str, consumer: str) -> tuple[Sequence[Any], list]:
        return records, []


@lru_cache(maxsize=16)
def _keys(inline: str | None, file: str | None) -> tuple[tuple[str, bytes], ...]:
    keys = parse_keys(inline, file)
    if keys:
        log.info("event provenance on: %d key(s) for %s", len(keys), sorted({principal_of(k) for k in keys}))
    return tuple(keys.items())


def _settings_keys(kafka: Any) -> dict[str, bytes]:
    return dict(_keys(getattr(kafka, "event_keys", None), getattr(kafka, "event_keys_file", None)))


def signer_for(kafka: Any) -> EventSigner | None:
    """The signer of a process with these Kafka settings, or ``None`` without keys."""
    keys = _settings_keys(kafka)
    return EventSigner(keys) if keys else None


def verifier_for(kafka: Any) -> EventVerifier | NoVerification:
    """The verifier of a consumer with these Kafka settings (:class:`NoVerification` without keys)."""
    keys = _settings_keys(kafka)
    return EventVerifier(keys) if keys else NoVerification()
