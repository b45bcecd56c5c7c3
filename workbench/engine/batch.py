"""Continuous batching: generations with different prompts and settings share one decode step.

A server's requests arrive at any time, each with its own prompt, sampling settings and n. A `Batch`
holds them as members; `step()` moves every member on by one token:

1. a new member's prompt is prefilled in chunks of `prefill_chunk` tokens into a cache of its own,
   at most `prefill_chunk` prompt tokens per step while others decode, so a long prompt delays the
   others' next token by about one chunk (a few decode steps), never by the whole prompt;
2. once prefilled, its n rows join the shared KV cache (its prefill copied to each row: one
   prefill for n choices) and their first tokens are sampled;
3. each step feeds every joined row through one batched decode step, each row at its own position
   (GPT.decode_step with per-row positions: masks hide what lies past a row's end), and each
   member's rows are sampled with its own settings (temperature, top_k, top_p, seed, repetition
   penalty, stop strings): members with the same settings in one call, each row drawing from its
   member's own seeded generator, so a seeded answer does not depend on who else is in the batch;
4. a member whose rows are all finished (or whose context is full, or that was cancelled) leaves
   at once: the last rows of the cache move into its slots, so the batch stays dense.

Eager decoding attends over the cache up to the longest row; compiled decoding (torch.compile,
static shapes) over the whole cache, with the batch padded to a power of two so that a handful of
graphs serve every batch size. Models without a KV cache (bigram, mlp: tiny windows re-fed every
step) keep one ModelSource per member and step them one after another.

Engine.batch() makes one (this module sits below engine.py: the engine hands it its ModelSource
class; rows.py's RowGroup is shared by both). Only one thread may use a Batch (the server's
generation thread). A failure in one member's own work (its prefill, its sampling or tools) ends
that member alone; a failure of the shared decode step ends every decoding member, and the batch
starts afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from workbench.engine.rows import Event, RowGroup
from workbench.engine.sampling import SamplingParams, sample_next


class Member:
    """One generation in the batch: a prompt, its settings, n rows (see RowGroup)."""

    def __init__(self, group: RowGroup):
        self.group = group
        self.prompt_ids = group.prompt_ids
        self.state = "waiting"  # waiting | prefilling | decoding | ended
        self.prefilled = 0  # prompt tokens in the member's own cache so far
        self.cache = None  # that cache (KV models), until it joins the shared one
        self.source: Any = None  # models without a KV cache: the member's own ModelSource
        self.slots: list[int] = []  # its rows' places in the shared cache
        self.length = 0  # tokens in the cache for each of its rows (all rows of a member are level)
        self.feed: list[int] = []  # the tokens its rows feed next
        self.done_sent: set[int] = set()  # rows whose "done" event went out
        self.error: BaseException | None = None
        self.cancelled = False

    @property
    def rows(self) -> int:
        return len(self.group.rows)


class Batch:
    def __init__(self, model, tokenizer, make_group: Callable[..., RowGroup], make_source: Callable[..., Any],
                 device="cpu", use_cache: bool = True, compiled_step: Callable | None = None,
                 prefill_chunk: int = 64):
        """make_group: RowGroup; make_source: ModelSource; compiled_step: the model's compiled
        decode_step, or None to decode eagerly."""
        self.model, self.tokenizer = model, tokenizer
        self.make_group, self.make_source = make_group, make_source
        self.device = torch.device(device)
        self.prefill_chunk = prefill_chunk
        self.shared = _SharedCache(model, self.device, compiled_step) \
            if use_cache and getattr(model, "supports_kv_cache", False) else None
        self.max_len = model.config.seq_len if self.shared is not None else None
        self.members: list[Member] = []  # in arrival order

    # ---- members ----

    def add(self, prompt_ids: list[int], params: SamplingParams, num_samples: int = 1, use_tools: bool = True,
            tool_text: Callable[[str, str], str] | None = None) -> Member:
        """A new member; it is prefilled and starts answering over the next steps."""
        if not prompt_ids:
            raise ValueError("generation needs at least one prompt token")
        if self.max_len is not None and len(prompt_ids) >= self.max_len:
            raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room in a context of {self.max_len}")
        member = Member(self.make_group(self.tokenizer, prompt_ids, params, num_samples, use_tools, tool_text))
        self.members.append(member)
        return member

    def cancel(self, member: Member) -> None:
        """Drop a member now (its client left); its slots go to the others."""
        member.cancelled = True
        self._leave(member)

    @property
    def rows(self) -> int:
        """Rows of all members not yet ended (decoding, prefilling or waiting for it)."""
        return sum(member.rows for member in self.members)

    # ---- one step ----

    def step(self) -> tuple[list[tuple[Member, int, list[Event]]], list[Member]]:
        """One token for every decoding member, and the next prefill work. Returns the events
        produced, as (member, row index, events), and the members that ended in this step (their
        rows finished, or `error` set)."""
        updates: list[tuple[Member, int, list[Event]]] = []
        ended: list[Member] = []
        decoding = [member for member in self.members if member.state == "decoding"]
        if decoding:
            self._decode(decoding, updates, ended)
        self._prefill(bool(decoding), updates, ended)
        return updates, ended

    def _decode(self, decoding: list[Member], updates: list[tuple[Member, int, list[Event]]], ended: list[Member]) -> None:
        try:
            if self.shared is not None:  # a member's rows are its slots of the shared step's logits
                logits = self.shared.step(decoding)
                rows_of = {id(member): member.slots for member in decoding}
            else:  # each member's own source, one after another
                logits = torch.cat([member.source.step(member.feed) for member in decoding])
                starts = [0]
                for member in decoding:
                    starts.append(starts[-1] + member.rows)
                rows_of = {id(member): list(range(starts[i], starts[i + 1])) for i, member in enumerate(decoding)}
        except Exception as error:  # the shared step failed: nobody's cache can be trusted
            for member in decoding:
                self._fail(member, error, ended)
            if self.shared is not None:
                self.shared.clear()
            return
        for member in decoding:
            member.length += 1
        self._advance(decoding, logits, rows_of, updates, ended)

    def _prefill(self, others_decoding: bool, updates: list[tuple[Member, int, list[Event]]], ended: list[Member]) -> None:
        """Prefill chunks, oldest member first, up to `prefill_chunk` tokens while others decode
        (their next token waits for this), or until one member joins when nobody does."""
        budget = self.prefill_chunk
        for member in [m for m in self.members if m.state in ("waiting", "prefilling")]:
            if others_decoding and budget <= 0:
                return
            try:
                logits, used = self._prefill_chunk(member, budget if others_decoding else self.prefill_chunk)
            except Exception as error:
                self._fail(member, error, ended)
                continue
            budget -= used
            if logits is None:
                if others_decoding:
                    return  # the rest of this prompt goes in the next steps
                continue
            self._advance([member], logits, {id(member): list(range(member.rows))}, updates, ended)
            others_decoding = others_decoding or member.state == "decoding"

    def _prefill_chunk(self, member: Member, budget: int) -> tuple[torch.Tensor | None, int]:
        """Feed up to `budget` more prompt tokens; once the prompt is in, join the batch and return
        the logits for the member's rows [n, V]. Returns (logits or None, tokens fed)."""
        prompt = member.prompt_ids
        with torch.inference_mode():
            if self.shared is None:  # no KV cache: the whole (short, windowed) prompt at once
                member.source = self.make_source(self.model, self.device, use_cache=False)
                logits = member.source.prefill(prompt, member.rows)
                member.state, member.length = "decoding", len(prompt)
                return logits, len(prompt)
            if member.cache is None:
                member.state = "prefilling"
                member.cache = self.model.make_kv_cache(1, self.max_len, device=self.device,
                                                        dtype=self.shared.dtype)
            end = min(len(prompt), member.prefilled + max(budget, 1))
            idx = torch.tensor([prompt[member.prefilled:end]], dtype=torch.long, device=self.device)
            logits = self.model(idx, kv_cache=member.cache)[:, -1]
            used, member.prefilled = end - member.prefilled, end
            if end < len(prompt):
                return None, used
            self.shared.join(member, member.cache)
            member.cache = None
            member.state, member.length = "decoding", len(prompt)
            return logits.expand(member.rows, -1), used

    def _advance(self, members: list[Member], logits: torch.Tensor, rows_of: dict[int, list[int]],
                 updates: list[tuple[Member, int, list[Event]]], ended: list[Member]) -> None:
        """Sample the members' rows (a member's: rows_of[id(member)] of logits) and feed them
        their tokens; a member leaves when its rows are all finished or its context is full."""
        sampled = self._sample(members, logits, rows_of, ended)
        for member in members:
            if member.state == "ended":  # its sampling failed
                continue
            group = member.group
            try:
                member.feed, produced = group.advance(None, sampled.get(id(member), []))
                room = None if self.max_len is None else self.max_len - member.length
                if not group.finished and room is not None and room <= 0:
                    produced += group.finish_length()
            except Exception as error:
                self._fail(member, error, ended)
                continue
            by_row: dict[int, list[Event]] = {}
            for index, events in produced:
                by_row.setdefault(index, []).extend(events)
            for index, row in enumerate(group.rows):
                if row.finished and index not in member.done_sent:
                    member.done_sent.add(index)
                    by_row.setdefault(index, []).append(row.done_event(len(member.prompt_ids)))
            updates.extend((member, index, events) for index, events in sorted(by_row.items()))
            if group.finished:
                self._leave(member)
                ended.append(member)

    def _sample(self, members: list[Member], logits: torch.Tensor, rows_of: dict[int, list[int]],
                ended: list[Member]) -> dict[int, list[int]]:
        """Sampled tokens for every row of the members that need any, one sample_next call per
        set of settings: each row draws from its member's generator."""
        alike: dict[tuple, list[Member]] = {}
        for member in members:
            if member.group.needs_sample:
                params = member.group.params
                key = (params.temperature, params.top_k, params.top_p, params.repetition_penalty)
                alike.setdefault(key, []).append(member)
        sampled: dict[int, list[int]] = {}
        for same in alike.values():
            try:
                states = [member.group.sampler(logits) for member in same]
                rows = torch.tensor([row for member in same for row in rows_of[id(member)]], device=logits.device)
                generators = [generator for member, (generator, _) in zip(same, states, strict=True)
                              for _ in range(member.rows)]
                seen = None if states[0][1] is None else torch.cat([seen for _, seen in states])
                tokens = sample_next(logits.index_select(0, rows), same[0].group.params, generators, seen).tolist()
            except Exception as error:
                for member in same:
                    self._fail(member, error, ended)
                continue
            for member in same:
                sampled[id(member)], tokens = tokens[:member.rows], tokens[member.rows:]
        return sampled

    def _fail(self, member: Member, error: BaseException, ended: list[Member]) -> None:
        member.error = error
        self._leave(member)
        ended.append(member)

    def _leave(self, member: Member) -> None:
        if member.state == "ended":
            return
        if self.shared is not None and member.slots:
            self.shared.leave(member)
        member.state, member.cache, member.source = "ended", None, None
        if member in self.members:
            self.members.remove(member)

    # ---- compiled decoding ----

    def warm_up(self, max_rows: int) -> float:
        """Compiled decoding: build the graphs of every padded batch size up to max_rows now, so no
        request waits for a compile. Returns the seconds it took (0 when not compiled)."""
        if self.shared is None or self.shared.compiled_step is None:
            return 0.0
        start = time.perf_counter()
        self.shared.warm_up(max_rows)
        return time.perf_counter() - start


class _SharedCache:
    """Every decoding row's keys and values, [layers, capacity, kv_heads, max_len, head_dim], rows
    0..size-1 in use, each with its own length; `owner[slot]` names the member row in a slot."""

    def __init__(self, model, device: torch.device, compiled_step: Callable | None):
        self.model, self.device = model, device
        self.dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.max_len = model.config.seq_len
        self.compiled_step = compiled_step
        self.clear()

    def clear(self) -> None:
        self.k = self.v = None
        self.capacity = self.size = 0
        self.lengths: list[int] = []  # per slot in use
        self.owner: list[tuple[Member, int]] = []

    def _reserve(self, rows: int) -> None:
        """Room for `rows` rows, growing by doubling (a copy of what is there)."""
        if rows <= self.capacity:
            return
        capacity = max(8, self.capacity)
        while capacity < rows:
            capacity *= 2
        fresh = self.model.make_kv_cache(capacity, self.max_len, device=self.device, dtype=self.dtype)
        if self.k is not None:
            fresh.k[:, :self.size] = self.k[:, :self.size]
            fresh.v[:, :self.size] = self.v[:, :self.size]
        self.k, self.v, self.capacity = fresh.k, fresh.v, capacity

    @torch.inference_mode()  # the cache tensors are inference tensors: written only in this mode
    def join(self, member: Member, cache) -> None:
        """The member's prefilled batch-1 cache, copied to n new rows."""
        rows, length = member.rows, cache.pos
        self._reserve(self.size + rows)
        member.slots = list(range(self.size, self.size + rows))
        self.k[:, self.size:self.size + rows, :, :length] = cache.k[:, :, :, :length]
        self.v[:, self.size:self.size + rows, :, :length] = cache.v[:, :, :, :length]
        self.size += rows
        self.lengths += [length] * rows
        self.owner += [(member, row) for row in range(rows)]

    @torch.inference_mode()
    def leave(self, member: Member) -> None:
        """Free the member's slots, moving the last rows into them (the cache stays dense)."""
        for slot in sorted(member.slots, reverse=True):
            last = self.size - 1
            if slot != last:
                self.k[:, slot] = self.k[:, last]
                self.v[:, slot] = self.v[:, last]
                self.lengths[slot] = self.lengths[last]
                moved, row = self.owner[slot] = self.owner[last]
                moved.slots[row] = slot
            self.lengths.pop()
            self.owner.pop()
            self.size -= 1
        member.slots = []

    @torch.inference_mode()
    def step(self, decoding: list[Member]) -> torch.Tensor:
        """One decode step of every row: logits [size, V]; each row's new key and value written at
        its position, which then moves on by one."""
        size = self.size
        tokens = [0] * size
        for member in decoding:
            for row, slot in enumerate(member.slots):
                tokens[slot] = member.feed[row]
        if self.compiled_step is not None:
            batch = _padded(size)
            self._reserve(batch)
            idx = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
            idx[:size, 0] = torch.tensor(tokens, dtype=torch.long, device=self.device)
            positions = torch.zeros(batch, dtype=torch.long, device=self.device)  # padding sees nothing
            positions[:size] = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
            logits, keys, values = self.compiled_step(idx, self.k[:, :batch], self.v[:, :batch], positions)
            logits, keys, values = logits[:size], keys[:, :size], values[:, :size]
            positions = positions[:size]
        else:
            seen = max(self.lengths)  # no row reads past its own length: attend up to the longest
            idx = torch.tensor(tokens, dtype=torch.long, device=self.device).view(size, 1)
            positions = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
            logits, keys, values = self.model.decode_step(idx, self.k[:, :size, :, :seen], self.v[:, :size, :, :seen],
                                                          positions)
        rows = torch.arange(size, device=self.device)
        # k[:, rows, :, positions] is [size, layers, kv_heads, head_dim]: the indexed dims come first
        self.k[:, rows, :, positions] = keys.transpose(0, 1).to(self.dtype)
        self.v[:, rows, :, positions] = values.transpose(0, 1).to(self.dtype)
        self.lengths = [length + 1 for length in self.lengths]
        return logits

    @torch.inference_mode()
    def warm_up(self, max_rows: int) -> None:
        batch = 1
        while True:
            self._reserve(batch)
            idx = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
            positions = torch.zeros(batch, dtype=torch.long, device=self.device)
            self.compiled_step(idx, self.k[:, :batch], self.v[:, :batch], positions)
            if batch >= max_rows:
                return
            batch *= 2


def _padded(rows: int) -> int:
    """The compiled batch size for `rows` rows: the next power of two (few graphs for any load)."""
    size = 1
    while size < rows:
        size *= 2
    return size

