"""The Faust internals IOC relies on, pinned to the installed faust-streaming (shared/stream/faust_adapter.py).

An upgrade of faust-streaming (or of the aiokafka it builds consumers with) that renames, re-signs or stops
calling one of the private methods the adapter overrides, or drops a private attribute it reads, fails here,
in one place, instead of as a worker that silently falls back to Faust's per-message loop or stops committing.
"""

from __future__ import annotations

import ast
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from shared.stream import faust_adapter
from shared.stream.faust_adapter import (
    FAUST_VERSION,
    OVERRIDES,
    PRIVATE_ATTRIBUTES,
    BatchApp,
    BatchConsumer,
    BatchTransport,
    _ConsumerThread,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_adapter_is_written_for_the_installed_and_pinned_faust_version():
    assert version("faust-streaming") == FAUST_VERSION == faust.__version__
    pinned = re.search(r"^faust-streaming==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned is not None and pinned.group(1) == FAUST_VERSION


@pytest.mark.parametrize("override", OVERRIDES, ids=[o.name for o in OVERRIDES])
def test_each_overridden_faust_method_still_exists_with_its_signature_and_is_still_called(override):
    assert override.name in vars(override.faust_class), (
        f"{override.faust_class.__qualname__} no longer defines {override.name}"
    )
    faust_method = getattr(override.faust_class, override.name)
    assert tuple(inspect.signature(faust_method).parameters) == override.parameters
    assert f"{override.name}(" in inspect.getsource(override.called_from), (
        f"{override.called_from.__qualname__} no longer calls {override.name}: the override would be bypassed"
    )


def test_the_adapter_overrides_exactly_the_listed_private_methods():
    """A private override added to the adapter without an entry in OVERRIDES would escape the checks above."""
    listed = {o.name for o in OVERRIDES}
    overridden = {
        name
        for cls in (_ConsumerThread, BatchConsumer, BatchTransport, BatchApp)
        for name, value in vars(cls).items()
        if name.startswith("_") and not name.startswith("__") and callable(value)
    }
    assert overridden == listed
    for o in OVERRIDES:  # each override keeps Faust's parameters
        ours = next(
            getattr(c, o.name) for c in (_ConsumerThread, BatchConsumer, BatchApp) if o.name in vars(c)
        )
        assert tuple(inspect.signature(ours).parameters) == o.parameters


def test_the_driver_uses_no_private_faust_name_outside_the_adapter():
    tree = ast.parse((ROOT / "shared" / "stream" / "faust_driver.py").read_text())
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    private_faust = {name for _, name in PRIVATE_ATTRIBUTES} | {o.name for o in OVERRIDES}
    assert not attributes & private_faust, (
        f"faust_driver.py reaches Faust internals: {attributes & private_faust}"
    )
    imported = {
        alias.name if isinstance(node, ast.Import) else f"{node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m.startswith("faust.")}, "Faust's modules are the adapter's to import"


def test_no_driver_reads_the_cores_private_attributes():
    """The drivers use the core's public surface (``writes_in_flight``, ``settle()``...): a private attribute of
    the core read from a driver (``self.core._pending``) would silently break when the core changes."""
    for name in ("faust_driver.py", "librdkafka_driver.py", "runtime.py"):
        tree = ast.parse((ROOT / "shared" / "stream" / name).read_text())
        reached = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and (
                (isinstance(node.value, ast.Attribute) and node.value.attr == "core")
                or (isinstance(node.value, ast.Name) and node.value.id == "core")
            )
        }
        assert not reached, f"{name} reads the core's private attributes: {sorted(reached)}"


async def test_each_private_attribute_the_adapter_reads_is_still_there(tmp_path):
    app = BatchApp(
        "adapter-probe", broker="kafka://127.0.0.1:1", web_enabled=False, store="memory://", datadir=tmp_path
    )
    consumer = app.consumer  # built, never started: nothing connects
    aiokafka_consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    owners = {
        "faust Consumer": consumer,
        "faust ThreadDelegateConsumer": consumer,
        "faust AIOKafkaConsumerThread": faust_aiokafka.AIOKafkaConsumerThread,
        "aiokafka AIOKafkaConsumer": aiokafka_consumer,
    }
    assert isinstance(consumer, BatchConsumer) and isinstance(consumer._thread, _ConsumerThread)
    missing = [f"{owner}.{name}" for owner, name in PRIVATE_ATTRIBUTES if not hasattr(owners[owner], name)]
    assert not missing, f"gone from the installed Faust/aiokafka: {missing}"
    # the public attributes the adapter's fetch relies on, set by Faust's Consumer.__init__
    for name in ("flow_active", "can_resume_flow"):
        assert hasattr(consumer, name)
    # the aiokafka consumer settings configure_worker_consumer writes are read back by start() under these names
    assert "self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    assert "self._isolation_level" in inspect.getsource(AIOKafkaConsumer.start)
    assert faust_adapter.group_generation.__doc__
