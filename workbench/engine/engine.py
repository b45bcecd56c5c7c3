"""Generation: prefill once, decode one token at a time, tools and reasoning in the stream.

The loop, top to bottom:
1. the prompt goes through the model once (prefill) into a preallocated KV cache of batch 1,
   which is then copied to the N rows that sample from it (shared prefill);
2. each step picks one token per row: the next forced token if the row has any (tool output),
   else a sampled one; each row's state machine (rows.py) turns its token into events (text,
   thought, tool call, tool output) and decides whether the row is finished;
3. the chosen tokens go through the model as one [N, 1] batch, and the loop repeats until every
   row is finished, or the cache is full ("length").

Everything the model does is behind a token source (`ModelSource`): `prefill(ids, n)` and
`step(tokens)` return next-token logits [N, V]. Models without a KV cache (bigram, mlp, or a GPT
with use_cache=False for comparison) re-feed the last `max_context` tokens each step. Tests can
drive the same loop with a scripted source, so the tool and reasoning logic is tested on exactly
the code that runs with a real model.

Rows stop at <|assistant_end|> (or <|bos|>, <|user_start|>, <|assistant_start|>, which can only
mean the model has left its turn), at max_tokens (forced tokens count too), at a stop string in
the answer text, or when the context is full. A stopping token is kept in `Generation.tokens`
(GRPO trains on <|assistant_end|>); a stop string is cut from the text.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from workbench.engine.batch import Batch
from workbench.engine.rows import Completion, Event, RowGroup
from workbench.engine.sampling import SamplingParams, sample_next
from workbench.tokenizer import ASSISTANT_START


class ContextLengthExceeded(ValueError):
    """A prompt that does not fit the context with room for the answer (OpenAI's wording)."""

    def __init__(self, prompt_tokens: int, reserve: int, limit: int):
        self.prompt_tokens, self.reserve, self.limit = prompt_tokens, reserve, limit
        super().__init__(f"This model's maximum context length is {limit} tokens. However, you requested "
                         f"{prompt_tokens + reserve} tokens ({prompt_tokens} in the messages, {reserve} in the "
                         "completion). Please reduce the length of the messages or completion.")


@dataclass
class Generation:
    tokens: list[int]
    sampled_mask: list[int]  # 1: sampled by the model, 0: forced (tool output)
    finish_reason: str | None = None


# ---------------------------------------------------------------------------------------------
# token sources: what the loop asks the model


def compiled_decode_step(model):
    """The model's decode_step under torch.compile, made once per model and shared by every
    generation on it. Static shapes: one graph per batch size, each position a new input, not a
    new graph. The first call of a batch size compiles (~20 s for d8 on a 2-core CPU; inductor
    caches on disk, so a later process takes a few seconds)."""
    compiled = getattr(model, "_compiled_decode_step", None)
    if compiled is None:
        # one graph per batch size (a server's n up to --max-n, GRPO's group): torch's default of 8
        # graphs per function would make the ninth batch size a hard error under fullgraph
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        compiled = torch.compile(model.decode_step, dynamic=False, fullgraph=True)
        model._compiled_decode_step = compiled
    return compiled


class ModelSource:
    """Next-token logits from a model, with a preallocated KV cache or by re-feeding the context.

    compiled: decode through the model's compiled static-shape decode_step (GPT only; prefill
    stays eager, its length varies), ~2x faster batch-1 decoding on CPU (bench/generate.py)."""

    def __init__(self, model, device, use_cache: bool = True, compiled: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.use_cache = use_cache and getattr(model, "supports_kv_cache", False)
        self.decode_step = compiled_decode_step(model) if compiled and self.use_cache else None
        # A GPT cannot see past seq_len with or without the cache; the baselines have no such limit.
        self.max_len = model.config.seq_len if getattr(model, "supports_kv_cache", False) else None
        self.max_context = model.max_context
        # the activations' dtype (an INT8 model's linears hold int8, its embedding stays float)
        self.dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.cache = None
        self.history: torch.Tensor | None = None  # [N, length], the no-cache path
        self.length = 0

    def room(self) -> int | None:
        """Tokens that can still be fed (None: no limit)."""
        return None if self.max_len is None else self.max_len - self.length

    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int], num_samples: int) -> torch.Tensor:
        idx = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        self.length = len(prompt_ids)
        if self.use_cache:
            self.cache = self.model.make_kv_cache(1, self.max_len, device=self.device, dtype=self.dtype)
            logits = self.model(idx, kv_cache=self.cache)[:, -1]
            if num_samples > 1:
                self.cache = self.cache.expand(num_samples)
        else:
            self.history = idx.expand(num_samples, -1)
            logits = self.model(idx[:, -self.max_context:])[:, -1]
        return logits.expand(num_samples, -1)

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        self.length += 1
        if self.decode_step is not None:
            position = torch.tensor(self.cache.pos, device=self.device)
            logits, keys, values = self.decode_step(idx, self.cache.k, self.cache.v, position)
            self.cache.append(keys, values)
            return logits
        if self.use_cache:
            return self.model(idx, kv_cache=self.cache)[:, -1]
        self.history = torch.cat([self.history, idx], dim=1)
        return self.model(self.history[:, -self.max_context:])[:, -1]


def optimize_for_cpu_decode(model) -> None:
    """Store every float32 nn.Linear weight column-major (same values and shape, transposed
    memory): F.linear then hands MKL a contiguous [in, out] matrix, which a batch-1 matmul streams
    at ~13 GB/s instead of ~11 on this class of CPU (d8 shapes, one thread; measured ~6-17% faster
    decode); bigger batches run the same. Only for models the engine owns: a model still being
    trained keeps its layout."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.float32 \
                and module.weight.device.type == "cpu" and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()


def measure_speed(model, prompt_tokens: int = 16, new_tokens: int = 64, batch_size: int = 1,
                  use_cache: bool = True, device="cpu", seed: int = 0, clock=time.perf_counter,
                  compiled: bool = False) -> dict[str, float]:
    """Prefill and decode tokens/s of the engine's token source and sampler (random token ids,
    greedy, no stop): prefill = prompt_tokens / its forward time; decode = batch_size *
    new_tokens / the time of new_tokens steps (each a forward of [batch, 1] and a sample).
    `clock` may be time.process_time to count this process's CPU time on a busy machine."""
    source = ModelSource(model, device, use_cache, compiled)
    limit = source.room()
    if limit is not None:
        prompt_tokens = min(prompt_tokens, limit - new_tokens)
        if prompt_tokens < 1:
            raise ValueError(f"prompt + {new_tokens} new tokens do not fit the context of {limit}")
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.vocab_size, (prompt_tokens,), generator=generator).tolist()
    params = SamplingParams(temperature=0.0)
    start = clock()
    logits = source.prefill(prompt, batch_size)
    tokens = sample_next(logits, params).tolist()
    prefill_seconds = clock() - start
    start = clock()
    for _ in range(new_tokens):
        tokens = sample_next(source.step(tokens), params).tolist()
    decode_seconds = clock() - start
    return {"prefill_tokens_per_second": prompt_tokens / prefill_seconds,
            "decode_tokens_per_second": batch_size * new_tokens / decode_seconds,
            "prefill_seconds": prefill_seconds, "decode_seconds": decode_seconds}


# ---------------------------------------------------------------------------------------------
# the loop


class GenerationRun:
    """One generation: iterate it for (row index, events) as tokens are produced; `rows` holds
    each row's tokens, sampled mask and finish reason. Nothing runs until it is iterated, and
    several runs may be interleaved on one engine (each has its own cache)."""

    def __init__(self, source, tokenizer, prompt_ids: list[int], params: SamplingParams,
                 num_samples: int = 1, use_tools: bool = True):
        if not prompt_ids:
            raise ValueError("generation needs at least one prompt token")
        room = source.room()
        if room is not None and len(prompt_ids) >= room:
            prompt_ids = prompt_ids[-(room - 1):]  # keep the most recent context, one slot to answer
        self.source, self.tokenizer, self.params = source, tokenizer, params
        self.prompt_ids = list(prompt_ids)
        self.group = RowGroup(tokenizer, self.prompt_ids, params, num_samples, use_tools)
        self.rows = self.group.rows

    def __iter__(self) -> Iterator[tuple[int, list[Event]]]:
        # A model still being trained (SFT probes, GRPO rollouts) generates in eval mode and gets
        # its mode back when the run ends or is abandoned.
        model = getattr(self.source, "model", None)
        was_training = bool(model is not None and model.training)
        if was_training:
            model.eval()
        try:
            yield from self._loop()
        finally:
            if was_training:
                model.train()

    def _loop(self) -> Iterator[tuple[int, list[Event]]]:
        group, source = self.group, self.source
        logits = source.prefill(self.prompt_ids, len(group.rows))
        while True:
            feed, produced = group.advance(logits)
            yield from produced
            if group.finished:
                return
            room = source.room()
            if room is not None and room <= 0:
                yield from group.finish_length()
                return
            logits = source.step(feed)


# ---------------------------------------------------------------------------------------------
# the engine


class Engine:
    def __init__(self, model, tokenizer, device="cpu", use_cache: bool = True, compiled: bool = False):
        self.model = model  # generation runs in eval mode (see GenerationRun); from_checkpoint's stays there
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.use_cache = use_cache
        self.compiled = compiled  # decode through the compiled decode step (ModelSource)
        self.model_name = ""
        self.checkpoint = None  # the Checkpoint it was loaded from (from_checkpoint)

    @classmethod
    def from_checkpoint(cls, spec, device="auto", dtype: str | None = None, compiled: bool = False) -> Engine:
        """An engine over a checkpoint folder or run folder (its newest checkpoint).

        dtype: "float32" | "bfloat16" | None (bf16 on CUDA, float32 elsewhere). INT8 checkpoints
        keep their int8 linears whatever the dtype of the rest. compiled: see ModelSource."""
        from workbench.checkpoint import load_checkpoint
        from workbench.train.common import resolve_device

        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        checkpoint = load_checkpoint(spec, device=str(device))
        model = checkpoint.model
        chosen = dtype or ("bfloat16" if device.type == "cuda" else "float32")
        if chosen == "bfloat16":
            model = model.to(torch.bfloat16)
        if device.type == "cpu" and not compiled:  # the compiled step wants row-major weights
            optimize_for_cpu_decode(model)
        engine = cls(model, checkpoint.tokenizer, device=device, compiled=compiled)
        engine.model_name = checkpoint.path.parent.parent.name + "/" + checkpoint.path.name
        engine.checkpoint = checkpoint
        return engine

    @property
    def num_params(self) -> int:
        """Weights in the model (an INT8 model's int8 weights included, its scales not)."""
        return sum(t.numel() for name, t in self.model.state_dict().items() if not name.endswith("_scale"))

    # ---- token level ----

    def start(self, prompt_ids: list[int], params: SamplingParams, num_samples: int = 1,
              use_tools: bool = True, source=None) -> GenerationRun:
        """A generation of num_samples rows from a shared prefill; iterate it to run it."""
        source = source or ModelSource(self.model, self.device, self.use_cache, self.compiled)
        return GenerationRun(source, self.tokenizer, prompt_ids, params, num_samples, use_tools)

    def batch(self, prefill_chunk: int = 64) -> Batch:
        """A continuous batch on this engine's model (engine/batch.py): a server's generations,
        each with its own prompt and settings, sharing one decode step."""
        compiled = compiled_decode_step(self.model) if self.compiled and self.use_cache else None
        return Batch(self.model, self.tokenizer, RowGroup, ModelSource, self.device, self.use_cache, compiled,
                     prefill_chunk)

    def generate(self, prompt_ids: list[int], params: SamplingParams, num_samples: int = 1,
                 use_tools: bool = True) -> list[Generation]:
        """num_samples completions of one prompt from a shared prefill."""
        run = self.start(prompt_ids, params, num_samples, use_tools)
        for _ in run:
            pass
        return [Generation(row.tokens, row.sampled_mask, row.finish_reason) for row in run.rows]

    def warm_up(self, batch: Batch | None = None, max_rows: int = 1) -> float:
        """With compiled decoding: compile the batch-1 step now, on a throwaway generation, so the
        first user does not wait for it; or with `batch`, that batch's steps of up to max_rows
        rows. Returns the seconds it took (0 when not compiled)."""
        if not self.compiled:
            return 0.0
        start = time.perf_counter()
        try:
            if batch is not None:
                batch.warm_up(max_rows)
            else:
                self.generate([self.tokenizer.bos_id], SamplingParams(temperature=0.0, max_tokens=2), use_tools=False)
        except Exception as error:  # inductor needs a working C++ compiler (CPU) or Triton (GPU)
            from workbench.errors import BadInput

            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BadInput(f"--compile: torch.compile could not build the decode step ({reason}); "
                           "run without --compile") from None
        return time.perf_counter() - start

    # ---- chat level ----

    @property
    def context_length(self) -> int | None:
        """Most tokens a generation can hold (prompt and answer); None: no limit (models that
        re-feed a fixed window)."""
        return self.model.config.seq_len if getattr(self.model, "supports_kv_cache", False) else None

    def chat_prompt(self, messages: list[dict[str, Any]], params: SamplingParams, truncate: bool = True,
                    reserve: int | None = None) -> list[int]:
        """The conversation primed for the reply, with `reserve` tokens of the context left for the
        answer (default: min(max_tokens, half the context), a chat's budget).

        A final assistant message is an answer to continue: it stays open, without
        <|assistant_end|>. truncate=False: raises ContextLengthExceeded when it does not fit.
        truncate=True: the oldest user/assistant pairs are dropped (the system text then goes with
        the first turn kept), and when the last turn alone is too long, its oldest tokens, keeping
        <|bos|> and <|user_start|> in front. Every message is encoded once, so the cost is linear in
        the conversation however much is dropped. Raises ConversationError for a malformed one."""
        from workbench.tokenizer import ConversationError

        tokenizer = self.tokenizer
        messages = list(messages)
        if not messages or not all(isinstance(message, dict) for message in messages):
            tokenizer.render_turns(messages)  # raises, naming the problem
        system = messages[:1] if messages[0].get("role") == "system" else []
        rest = messages[len(system):]
        if not rest:
            raise ConversationError("conversation has no user message")
        turns = tokenizer.render_turns(rest)
        answering = rest[-1].get("role") == "assistant"
        if answering:
            turns[-1] = turns[-1][:-1]  # no <|assistant_end|>: the model goes on with this answer
        tail = [] if answering else [tokenizer.special_id(ASSISTANT_START)]
        last_user = len(turns) - (2 if answering else 1)

        def first_turn(index: int) -> list[int]:  # turn `index` opening the prompt, system text folded in
            return tokenizer.render_turns(system + rest[index:index + 1])[0] if system else turns[index]

        head = first_turn(0)
        ids = [tokenizer.bos_id, *head, *(token for turn in turns[1:] for token in turn), *tail]
        limit = self.context_length
        if limit is None:
            return ids
        reserve = min(params.max_tokens, limit // 2) if reserve is None else reserve
        if len(ids) + reserve <= limit:
            return ids
        if not truncate:
            raise ContextLengthExceeded(len(ids), reserve, limit)
        budget = limit - reserve
        if budget < 4:  # <|bos|> <|user_start|> one token <|assistant_start|>
            raise ContextLengthExceeded(len(ids), reserve, limit)
        # drop pairs from the front: the first turn kept is a user turn (even index)
        system_extra = len(head) - len(turns[0])
        after = [0] * (len(turns) + 1)  # after[i]: tokens of turns i.. (unfolded)
        for index in range(len(turns) - 1, -1, -1):
            after[index] = after[index + 1] + len(turns[index])
        start = 0
        while start < last_user and 1 + system_extra + after[start] + len(tail) > budget:
            start += 2
        head = first_turn(start)
        while start < last_user and 1 + len(head) + after[start + 1] + len(tail) > budget:
            start += 2  # the folded system text came out longer than estimated
            head = first_turn(start)
        ids = [tokenizer.bos_id, *head, *(token for turn in turns[start + 1:] for token in turn), *tail]
        if len(ids) > budget:  # the last turn alone is too long: its oldest tokens go
            ids = ids[:2] + ids[len(ids) - (budget - 2):]
        return ids

    def start_chat(self, messages, params: SamplingParams, num_samples: int = 1,
                   use_tools: bool = True) -> GenerationRun:
        """A generation answering the conversation (iterate it to run it)."""
        return self.start(self.chat_prompt(messages, params), params, num_samples, use_tools)

    def stream_chat(self, messages, params: SamplingParams, use_tools: bool = True) -> Iterator[Event]:
        """Events of one answer as it is generated: text pieces (complete UTF-8), thoughts, tool
        calls and outputs, then one "done" event with the finish reason and token counts."""
        run = self.start_chat(messages, params, 1, use_tools)
        for _, events in run:
            yield from events
        yield run.rows[0].done_event(len(run.prompt_ids))

    def complete_chat(self, messages, params: SamplingParams, n: int = 1,
                      use_tools: bool = True) -> list[Completion]:
        run = self.start_chat(messages, params, n, use_tools)
        for _ in run:
            pass
        return [row.completion(len(run.prompt_ids)) for row in run.rows]
