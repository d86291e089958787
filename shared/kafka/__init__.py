"""Kafka plumbing: the event publisher, topic administration and the validating consumer."""

from shared.kafka.admin import ensure_topics
from shared.kafka.consumer import EventConsumer
from shared.kafka.producer import BrokerUnavailable, EventPublisher

__all__ = ["BrokerUnavailable", "EventConsumer", "EventPublisher", "ensure_topics"]
