"""The ``ioc`` command: the composition root that knows every service, processor and simulator."""
