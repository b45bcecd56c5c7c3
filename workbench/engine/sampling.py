"""Sampling settings and the one function that turns a batch of logits into next tokens."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0: greedy
    top_k: int = 50  # 0: off
    top_p: float = 1.0  # 1: off; 0: the most likely token only (nucleus sampling always keeps one)
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already generated in this answer
    max_tokens: int = 256  # generated tokens, forced tool output included
    seed: int | None = None  # None: a fresh random seed per call
    stop: list[str] = field(default_factory=list)  # stop strings (answer text; not included in the output)

    def __post_init__(self):
        problems = []
        # NaN fails every comparison below the wrong way (nan < 0 is false): finite first
        for name in ("temperature", "top_p", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):
                problems.append(f"{name} must be a finite number")
        if self.temperature < 0:
            problems.append("temperature must be >= 0")
        if self.top_k < 0:
            problems.append("top_k must be >= 0")
        if not 0.0 <= self.top_p <= 1.0:
            problems.append("top_p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            problems.append("repetition_penalty must be > 0")
        if self.max_tokens < 1:
            problems.append("max_tokens must be >= 1")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        """Known keys only (unknown ones raise ValueError naming them); seed -1 means random."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown sampling settings: {', '.join(unknown)}")
        values = dict(values)
        if values.get("seed") is not None and int(values["seed"]) < 0:
            values["seed"] = None
        return cls(**values)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int | None, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | list[torch.Generator] | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits [N, V] (float) -> next token ids [N].

    `seen` is an optional bool mask [N, V] of tokens to penalize with the repetition penalty
    (CTRL-style: positive logits divided by the penalty, negative ones multiplied). `generator`
    may be one per row (rows of different requests sampled in one call, each from its own seed).
    """
    logits = logits.float()
    if params.repetition_penalty != 1.0 and seen is not None:
        penalized = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    vocab = logits.size(-1)
    if 0 < params.top_k < vocab:
        top_values, top_indices = torch.topk(logits, params.top_k, dim=-1)  # sorted, descending
        candidates_logits, candidates = top_values, top_indices
    elif params.top_p < 1.0:
        candidates_logits, candidates = torch.sort(logits, dim=-1, descending=True)
    else:
        probs = torch.softmax(logits, dim=-1)
        return _draw(probs, generator).squeeze(-1)
    if params.top_p < 1.0:
        probs = torch.softmax(candidates_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the better candidates
        beyond = before >= params.top_p
        beyond[..., 0] = False  # the best candidate always stays: top_p = 0 samples it alone
        candidates_logits = candidates_logits.masked_fill(beyond, float("-inf"))
    probs = torch.softmax(candidates_logits, dim=-1)
    return candidates.gather(-1, _draw(probs, generator)).squeeze(-1)


def _draw(probs: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """One index per row of probs [N, K] -> [N, 1]. With a generator per row: the first index
    whose cumulative probability passes a uniform draw from that row's generator."""
    if not isinstance(generator, list):
        return torch.multinomial(probs, 1, generator=generator)
    uniform = torch.cat([torch.rand(1, generator=row, device=probs.device) for row in generator])
    below = probs.cumsum(dim=-1) < uniform[:, None]
    # rounding can leave the whole sum below the draw: then the last index that has any probability
    last = probs.size(-1) - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1, keepdim=True)
    return torch.minimum(below.sum(dim=-1, keepdim=True), last)
