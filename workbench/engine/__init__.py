"""Inference: generation with a KV cache, sampling, streaming, tools, INT8 (see engine.py)."""

from workbench.engine.engine import Completion, Engine, Event, Generation, GenerationRun
from workbench.engine.sampling import SamplingParams

__all__ = ["Completion", "Engine", "Event", "Generation", "GenerationRun", "SamplingParams"]
