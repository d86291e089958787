"""Kafka client authentication: SASL/SCRAM (+ TLS) configuration per service principal, and a broker that
requires authentication refusing clients without (or with wrong) credentials.

The embedded Tansu 0.6 broker supports SCRAM (``tansu broker --authentication``) but cannot be given a user
in these tests: ``tansu user create`` itself needs an authenticated connection, the memory storage forgets
users on restart, and the storages that persist (postgres, libsql) are not compiled into the shipped binary.
So the successful SCRAM handshake is not exercised here (see docs/guarantees.md, Security); refusal is.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess

import certifi
import pytest
from aiokafka import AIOKafkaProducer

from shared.config import KafkaSettings
from shared.embedded.tansu import free_port, tansu_binary
from shared.kafka.producer import BrokerUnavailable, EventPublisher

SCRAM_ENV = {
    "IOC_KAFKA_BOOTSTRAP_SERVERS": "kafka-1.ioc.internal:9093,kafka-2.ioc.internal:9093",
    "IOC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "IOC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "IOC_KAFKA_SASL_USERNAME": "svc-kiosk",
    "IOC_KAFKA_SASL_PASSWORD": "kiosk-Very-Secret-9",
    "IOC_KAFKA_SSL_CAFILE": certifi.where(),
}


# Configuration ------------------------------------------------------------------------------------------------
async def test_scram_over_tls_from_the_environment_gives_aiokafka_the_right_arguments(monkeypatch):
    for k, v in SCRAM_ENV.items():
        monkeypatch.setenv(k, v)
    kw = KafkaSettings().client_kwargs()
    ctx = kw.pop("ssl_context")
    assert kw == {
        "bootstrap_servers": SCRAM_ENV["IOC_KAFKA_BOOTSTRAP_SERVERS"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc-kiosk",
        "sasl_plain_password": "kiosk-Very-Secret-9",
    }
    # TLS verifies the broker: certificate and host name.
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    # aiokafka accepts exactly these arguments (constructing connects nothing).
    producer = AIOKafkaProducer(**KafkaSettings().client_kwargs())
    assert producer.client._sasl_mechanism == "SCRAM-SHA-512"
    assert producer.client._security_protocol == "SASL_SSL"


async def test_every_service_reads_its_own_kafka_principal_from_its_environment(monkeypatch):
    from ioc import registry

    for k, v in SCRAM_ENV.items():
        monkeypatch.setenv(k, v)
    for entry in registry.present_services():
        settings = registry.load(entry.settings)()
        assert settings.kafka.sasl_username == "svc-kiosk", entry.name
        assert settings.kafka.client_kwargs()["security_protocol"] == "SASL_SSL", entry.name


def test_the_kafka_password_never_appears_in_settings_reprs_or_dumps(monkeypatch):
    for k, v in SCRAM_ENV.items():
        monkeypatch.setenv(k, v)
    settings = KafkaSettings()
    secret = SCRAM_ENV["IOC_KAFKA_SASL_PASSWORD"]
    assert secret not in repr(settings) and secret not in str(settings)


def test_sasl_credentials_with_a_plaintext_protocol_are_refused():
    with pytest.raises(ValueError):
        KafkaSettings(
            security_protocol="PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="svc",
            sasl_password="pw",
        )


# A broker that requires authentication -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory) -> str:
    """A Tansu broker of our own with ``--authentication`` (memory storage, no users)."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("tansu-auth") / "tansu.log", "wb")
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            "--authentication",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        import socket
        import time

        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the authenticating broker did not start") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _connects(**kw) -> bool:
    producer = AIOKafkaProducer(request_timeout_ms=3000, **kw)
    try:
        await asyncio.wait_for(producer.start(), 10)
        await asyncio.wait_for(producer.send_and_wait("ioc.security.probe", b"x"), 10)
        return True
    except Exception:
        return False
    finally:
        try:
            await producer.stop()
        except Exception:
            pass


async def test_broker_requiring_authentication_refuses_anonymous_and_wrong_credentials(auth_broker):
    assert not await _connects(bootstrap_servers=auth_broker)
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        assert not await _connects(
            bootstrap_servers=auth_broker,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_plain_username="svc-kiosk",
            sasl_plain_password="wrong",
        )


async def test_publisher_without_credentials_reports_broker_unavailable(auth_broker):
    publisher = EventPublisher(
        KafkaSettings(bootstrap_servers=auth_broker), client_id="sec-anon", timeout_s=5
    )
    with pytest.raises(BrokerUnavailable):
        await publisher.start()
    assert not publisher.started


async def test_publisher_with_wrong_scram_credentials_reports_broker_unavailable(auth_broker):
    settings = KafkaSettings(
        bootstrap_servers=auth_broker,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc-kiosk",
        sasl_password="wrong",
    )
    publisher = EventPublisher(settings, client_id="sec-wrong", timeout_s=5)
    with pytest.raises(BrokerUnavailable):
        await publisher.start()
