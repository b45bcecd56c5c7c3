"""Greedy generation for the generative evals (GSM8K, HumanEval) through the engine.

Each prompt is generated on its own (the engine shares a prefill across samples of ONE prompt, and
pass@1 with greedy decoding needs one sample). The completion is decoded with its special tokens as
text, so the scorers see thoughts, tool calls and tool outputs exactly as the model produced them.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.evals.common import Progress, no_progress


@dataclass
class Output:
    text: str
    finish_reason: str | None
    completion_tokens: int
    prompt_truncated: bool = False


def fit_prompt(prompt: list[int], context: int | None, max_new_tokens: int) -> list[int]:
    """A prompt that leaves room to answer in a model with a `context`-token window: at least
    min(max_new_tokens, context / 2) tokens. Too-long prompts keep their first token (<|bos|>) and
    lose the oldest text after it."""
    if not context:
        return prompt
    keep = context - min(max_new_tokens, context // 2)
    if len(prompt) <= keep:
        return prompt
    return prompt[:1] + prompt[len(prompt) - (keep - 1):]


def generate_all(engine, tokenizer, prompts: list[list[int]], max_new_tokens: int, seed: int | None,
                 stop: list[str] | None = None, use_tools: bool = True,
                 progress: Progress = no_progress) -> list[Output]:
    from workbench.engine import SamplingParams

    params = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, max_tokens=max_new_tokens,
                            seed=seed, stop=list(stop or []))
    model = engine.model
    context = model.config.seq_len if getattr(model, "supports_kv_cache", False) else None
    outputs = []
    for done, prompt in enumerate(prompts, start=1):
        fitted = fit_prompt(prompt, context, max_new_tokens)
        generation = engine.generate(fitted, params, num_samples=1, use_tools=use_tools)[0]
        tokens = list(generation.tokens)  # the completion only, forced tool output included
        text = tokenizer.decode(tokens)
        for marker in stop or []:
            if marker in text:
                text = text.split(marker, 1)[0]
        outputs.append(Output(text=text, finish_reason=generation.finish_reason, completion_tokens=len(tokens),
                              prompt_truncated=len(fitted) < len(prompt)))
        progress(done, len(prompts))
    return outputs
