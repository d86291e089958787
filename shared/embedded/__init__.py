"""Embedded servers for one-machine runs and tests: a Kafka-protocol broker and PostgreSQL, both from pip.

Each is wrapped behind one small class (``start()``, ``stop()``, a connection string) so it can be swapped for
an external cluster by setting ``IOC_KAFKA_BOOTSTRAP_SERVERS`` / ``IOC_DATABASE_URL``.
"""

from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.tansu import EmbeddedBroker, free_port

__all__ = ["EmbeddedBroker", "EmbeddedPostgres", "free_port"]
