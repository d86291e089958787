"""Stream processing: the processor contract and its fast Faust-based runtime."""

from shared.stream.processor import State, StreamProcessor, run_in_memory

__all__ = ["State", "StreamProcessor", "run_in_memory"]
