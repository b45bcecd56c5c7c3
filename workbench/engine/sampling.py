"""Sampling settings and the one function that turns a batch of logits into next tokens."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from workbench.config import SAMPLE_SETTINGS, SampleSection, check_sample_setting


@dataclass
class SamplingParams(SampleSection):
    """The [sample] settings (names, types, defaults and ranges are defined, and values checked, by
    workbench/config.py's SampleSection) plus a request's stop strings. A bad value raises one
    ValueError naming every bad setting. seed None, or -1 as in [sample]: a fresh random seed per call."""

    stop: list[str] = field(default_factory=list)  # stop strings (answer text; not included in the output)

    def __post_init__(self):
        if self.seed == -1:
            self.seed = None
        problems = []
        for name in SAMPLE_SETTINGS:
            value = getattr(self, name)
            if name == "seed" and value is None:
                continue
            value, problem = check_sample_setting(name, value)
            if problem:
                problems.append(f"{name}: {problem}")
            else:
                setattr(self, name, value)  # an int temperature becomes a float, as in a config
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            problems.append("stop: must be a string or a list of strings")
        else:
            self.stop = [s for s in self.stop if s]
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        """Known keys only (unknown ones raise ValueError naming them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown sampling settings: {', '.join(unknown)}")
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
