"""IOC's event contracts: the city's shared data standard.

Importing this package registers every event type and topic (``TOPICS``, ``EVENT_TYPES``). Each domain's
contracts live in their own module here (``shared.contracts.meter`` ...), because outside subscribers and
every service depend on them, and services never import each other.
"""

from importlib import import_module

from shared.contracts.base import EVENT_TYPES, TOPICS, EventModel, EventType, TopicSpec, event_type_of
from shared.contracts.common import DEAD_LETTER_TOPIC, AlarmChanged, KpiObserved

# Domain contract modules: each registers its topics and event types on import.
DOMAIN_MODULES = ("platform", "meter", "traffic", "kiosk", "dossier", "city")
for _name in DOMAIN_MODULES:
    try:
        import_module(f"shared.contracts.{_name}")
    except ModuleNotFoundError as exc:  # a domain not written yet
        if exc.name != f"shared.contracts.{_name}":
            raise

__all__ = [
    "DEAD_LETTER_TOPIC",
    "EVENT_TYPES",
    "TOPICS",
    "AlarmChanged",
    "EventModel",
    "EventType",
    "KpiObserved",
    "TopicSpec",
    "event_type_of",
]
