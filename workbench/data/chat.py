"""Chat data for SFT: JSONL loading with validation, GSM8K calculator calls, mixing, batches.

A chat JSONL line is {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
(other fields are ignored; a GSM8K line {"question", "answer"} is read as one exchange). A system
message folds into the first user turn. A line may also be one string of prefixed turns, as the
RustGPT fork's chat data is: "User: Hello Assistant: Hello, how can I help?" ([sft] turn_prefixes,
a prefix counts at the start or after whitespace). A .json file holds a list of either kind (read
whole, up to MAX_JSON_BYTES); JSON Lines saved as .json also works. Malformed lines or items
(bad JSON, missing roles, unknown roles, wrong user/assistant alternation, empty content, no
assistant reply, a string without turn prefixes, bytes that are not UTF-8, JSON nested too deeply)
are counted by reason and skipped; `LoadReport.summary()` says what was skipped where. A UTF-8
byte order mark is allowed. A file with no usable line, a UTF-16 or binary file, and anything but
a regular file (a FIFO would hang the reader) are BadInput.

GSM8K answers carry calculator annotations "48/2 = <<48/2=24>>24 clips": each becomes a tool call
in the assistant's content parts (text, {"type": "python", "text": "48/2"}, {"type":
"python_output", "text": "24"}, text), so the model learns to call the calculator; the closing
"#### 72" line stays as the answer line.

Datasets are mixed by weight ("path:weight", "synthetic:arith:weight" or "synthetic:chat:weight"
in [sft] datasets) by a seeded sampler whose position (a draw count per dataset) is part of the
checkpoint, so a resumed SFT run sees the same conversations an uninterrupted one would. A path
ending in "?" ("../shared/x.jsonl?:0.5") is optional: when it is missing the mixture goes on
without it, with a note. Each file dataset holds out [sft] val_fraction of its conversations for
validation (none below 20 conversations, and none at 0: train on all 30 facts); synthetic data
validates on a separate seed.

Batches: one conversation per row (never split across rows), rendered by
Tokenizer.render_conversation, truncated to seq_len + 1 tokens (counted), padded to the longest
row of the batch; targets are -1 wherever the loss mask is 0 (user text, tool output) or padding.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

from workbench.data.sources import BOM, SNIFF_BYTES, decode_line, sniff_head
from workbench.errors import BadInput
from workbench.input_files import JSON_LINES, NestedTooDeeply, open_regular, parse_json, parse_json_document
from workbench.tasks.answers import final_number

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "thinking", "python", "python_output")
CALCULATOR_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
SYNTHETIC_PREFIX = "synthetic:"
VAL_FRACTION = 0.05  # of each file dataset, held out for validation ([sft] val_fraction)
MIN_CONVERSATIONS_FOR_VAL = 20  # smaller file datasets train on everything
MAX_VAL_PER_DATASET = 100
SYNTHETIC_VAL_SIZE = 100
SYNTHETIC_VAL_SEED_OFFSET = 1_000_003  # validation problems come from their own seed
OPTIONAL_MARK = "?"
DEFAULT_TURN_PREFIXES = ("User:", "Assistant:")
MAX_JSON_BYTES = 256 << 20  # a .json chat file is parsed whole; larger data belongs in JSONL


class ChatFormatError(ValueError):
    """A conversation that cannot be trained on; `reason` is the short category counted in summaries."""

    def __init__(self, reason: str, detail: str = "", hint: str = ""):
        super().__init__(f"{reason}: {detail or hint}" if detail or hint else reason)
        self.reason = reason
        self.hint = hint  # true of every item skipped for this reason: shown once, with the reason


# ---------------------------------------------------------------------------------------------
# one conversation: validation, system folding, GSM8K calculator calls


def gsm8k_to_parts(answer: str) -> str | list[dict[str, str]]:
    """A GSM8K solution with <<expr=result>> annotations as assistant content parts; text without
    annotations comes back unchanged."""
    if not CALCULATOR_ANNOTATION.search(answer):
        return answer
    parts: list[dict[str, str]] = []
    position = 0
    for match in CALCULATOR_ANNOTATION.finditer(answer):
        if match.start() > position:
            parts.append({"type": "text", "text": answer[position:match.start()]})
        parts.append({"type": "python", "text": match.group(1).strip()})
        parts.append({"type": "python_output", "text": match.group(2).strip()})
        position = match.end()
    if position < len(answer):
        parts.append({"type": "text", "text": answer[position:]})
    return parts


def _content_of(message: dict[str, Any], role: str) -> str | list[dict[str, str]]:
    content = message.get("content")
    if content is None:
        raise ChatFormatError("missing content")
    if isinstance(content, str):
        if not content.strip():
            raise ChatFormatError("empty content", role)
        return gsm8k_to_parts(content) if role == "assistant" else content
    if not isinstance(content, list):
        raise ChatFormatError("bad content", f"{type(content).__name__} in a {role} turn")
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in PART_TYPES or not isinstance(part.get("text"), str):
            raise ChatFormatError("bad content", f"part {part!r:.60}")
        if role != "assistant" and part["type"] != "text":
            raise ChatFormatError("bad content", f"a {part['type']} part in a {role} turn")
        parts.append({"type": part["type"], "text": part["text"]})
    if not any(part["text"].strip() for part in parts):
        raise ChatFormatError("empty content", role)
    if role != "assistant":  # user and system turns are plain text
        return "".join(part["text"] for part in parts)
    return parts


def split_prefixed_turns(text: str, turn_prefixes=DEFAULT_TURN_PREFIXES) -> list[dict[str, str]]:
    """"User: Hello Assistant: Hi!" -> [{"role": "user", "content": "Hello"}, {"role": "assistant",
    "content": "Hi!"}]. A prefix counts at the start of the text or after whitespace; text before
    the first prefix, or no prefix at all, is a ChatFormatError (alternation is checked later)."""
    user, assistant = turn_prefixes
    pattern = re.compile(r"(?:^|(?<=\s))(" + re.escape(user) + "|" + re.escape(assistant) + ")")
    pieces = pattern.split(text)  # [before, prefix, content, prefix, content, ...]
    if len(pieces) == 1:
        raise ChatFormatError("no turn prefixes", hint=f"expected {user!r} and {assistant!r}, "
                                                       f"as set by [sft] turn_prefixes")
    if pieces[0].strip():
        raise ChatFormatError("text before the first turn prefix")
    return [{"role": "user" if prefix == user else "assistant", "content": content.strip()}
            for prefix, content in zip(pieces[1::2], pieces[2::2], strict=True)]


def normalize_conversation(record: Any, turn_prefixes=DEFAULT_TURN_PREFIXES) -> list[dict[str, Any]]:
    """Validated messages: user/assistant alternating, starting with user, ending with assistant,
    the system message folded into the first user turn. A string is a conversation of prefixed
    turns (split_prefixed_turns). Raises ChatFormatError."""
    if isinstance(record, str):
        record = {"messages": split_prefixed_turns(record, turn_prefixes)}
    if not isinstance(record, dict):
        raise ChatFormatError("not an object or a string")
    if "messages" not in record and isinstance(record.get("question"), str) and isinstance(record.get("answer"), str):
        record = {"messages": [{"role": "user", "content": record["question"]},
                               {"role": "assistant", "content": record["answer"]}]}
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("no messages")
    system = None
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not message.get("role"):
            raise ChatFormatError("missing role", f"message {index}")
        role = message["role"]
        if role not in ROLES:
            raise ChatFormatError("unknown role", repr(role))
        content = _content_of(message, role)
        if role == "system":
            if index != 0:
                raise ChatFormatError("wrong alternation", "system message after the first")
            system = content
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ChatFormatError("wrong alternation", f"message {index} is {role}, expected {expected}")
        turns.append({"role": role, "content": content})
    if not turns or turns[-1]["role"] != "assistant":
        raise ChatFormatError("no assistant reply")
    if system is not None:
        turns[0] = {"role": "user", "content": f"{system}\n\n{turns[0]['content']}"}
    return turns


# ---------------------------------------------------------------------------------------------
# files


@dataclass
class LoadReport:
    path: str
    lines: int = 0  # lines of a JSONL file, items of a .json list
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, int] = field(default_factory=dict)  # reason -> first line (item) number
    hints: dict[str, str] = field(default_factory=dict)  # reason -> what would fix it
    unit: str = "line"

    def reasons(self) -> str:
        return ", ".join(f"{reason}{f' ({self.hints[reason]})' if reason in self.hints else ''}: {count} "
                         f"(first at {self.unit} {self.examples[reason]})"
                         for reason, count in self.skipped.most_common())

    def units_read(self) -> str:
        return f"{self.lines} {self.unit}{'' if self.lines == 1 else 's'}"

    def summary(self) -> str:
        text = f"{self.path}: {self.kept} conversations from {self.units_read()}"
        if self.skipped:
            text += f"; skipped {sum(self.skipped.values())} ({self.reasons()})"
        return text


def load_chat_file(path: str | Path, turn_prefixes=DEFAULT_TURN_PREFIXES) -> tuple[list, LoadReport]:
    """A .json list (load_chat_json) or a JSONL file (load_chat_jsonl), by the file's suffix."""
    if Path(path).suffix.lower() == ".json":
        return load_chat_json(path, turn_prefixes)
    return load_chat_jsonl(path, turn_prefixes)


def load_chat_json(path: str | Path, turn_prefixes=DEFAULT_TURN_PREFIXES) -> tuple[list, LoadReport]:
    """Every valid conversation of a .json file holding a list of conversations (prefixed-turn
    strings or {"messages": ...} objects), and a report counting bad items. A file that is not one
    JSON value but JSON Lines is read as JSONL. BadInput when the file is unusable as a whole
    (missing, not regular, over MAX_JSON_BYTES, not UTF-8, invalid JSON, not a list, no valid item)."""
    path = Path(path)
    with open_regular(path, "chat data") as handle:
        try:
            raw = handle.read(MAX_JSON_BYTES + 1)
        except OSError as error:
            raise BadInput(f"{path}: cannot read chat data ({error.strerror or error})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise BadInput(f"{path}: a .json chat file over {MAX_JSON_BYTES >> 20} MiB; write it as JSONL "
                       f"(one conversation per line)")
    problem = sniff_head(raw[:SNIFF_BYTES])
    if problem:
        raise BadInput(f"{path}: {problem}")
    try:
        text = raw.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(f"{path}: not UTF-8 (byte {error.start})") from None
    del raw
    items = parse_json_document(path, text)
    if items is JSON_LINES:
        return load_chat_jsonl(path, turn_prefixes)
    if not isinstance(items, list):
        raise BadInput(f"{path}: expected a JSON list of conversations (\"User: ... Assistant: ...\" strings "
                       f"or {{\"messages\": [...]}} objects), got a {type(items).__name__}")
    report = LoadReport(str(path), lines=len(items), unit="item")
    conversations = []
    for number, item in enumerate(items, start=1):
        try:
            conversations.append(normalize_conversation(item, turn_prefixes))
        except ChatFormatError as error:
            _skip(report, error.reason, number, error.hint)
    return _finish(path, conversations, report)


def load_chat_jsonl(path: str | Path, turn_prefixes=DEFAULT_TURN_PREFIXES) -> tuple[list, LoadReport]:
    """Every valid conversation of a chat JSONL file, and a report of what was skipped and why.
    BadInput when the file is missing, unreadable, not a regular file, not UTF-8 text as a whole
    (UTF-16, binary), or holds no valid conversation."""
    path = Path(path)
    report = LoadReport(str(path))
    conversations = []
    with open_regular(path, "chat data") as handle:
        try:
            problem = sniff_head(handle.read(SNIFF_BYTES))
            if problem and problem != "empty file":
                raise BadInput(f"{path}: {problem}")
            handle.seek(0)
            for number, raw in enumerate(handle, start=1):
                if number == 1:
                    raw = raw.removeprefix(BOM)
                if not raw.strip():
                    continue
                report.lines += 1
                line = decode_line(raw)
                if line is None:
                    _skip(report, "not UTF-8", number)
                    continue
                try:
                    conversations.append(normalize_conversation(parse_json(line), turn_prefixes))
                except NestedTooDeeply as error:
                    _skip(report, error.msg, number)
                except json.JSONDecodeError:
                    _skip(report, "malformed JSON", number)
                except ChatFormatError as error:
                    _skip(report, error.reason, number, error.hint)
        except OSError as error:
            raise BadInput(f"{path}: cannot read chat data ({error.strerror or error})") from None
    return _finish(path, conversations, report)


def _finish(path: Path, conversations: list, report: LoadReport) -> tuple[list, LoadReport]:
    report.kept = len(conversations)
    if not conversations:
        problem = f" in {report.units_read()}: {report.reasons()}" if report.skipped else " (empty file)"
        raise BadInput(f"{path}: no valid chat conversations{problem}")
    return conversations, report


def _skip(report: LoadReport, reason: str, number: int, hint: str = "") -> None:
    report.skipped[reason] += 1
    report.examples.setdefault(reason, number)
    if hint:
        report.hints.setdefault(reason, hint)


# ---------------------------------------------------------------------------------------------
# datasets and the weighted mixture


class ChatDataset:
    """A finite list of conversations, reshuffled every epoch by a seeded permutation."""

    def __init__(self, name: str, conversations: list, weight: float, seed: int):
        self.name, self.conversations, self.weight, self.seed = name, conversations, weight, seed
        self._epoch, self._order = -1, list(range(len(conversations)))

    def item(self, k: int) -> list[dict[str, Any]]:
        epoch, index = divmod(k, len(self.conversations))
        if epoch != self._epoch:
            self._order = list(range(len(self.conversations)))
            random.Random(f"{self.seed}:{self.name}:{epoch}").shuffle(self._order)
            self._epoch = epoch
        return self.conversations[self._order[index]]


class SyntheticDataset:
    """An endless, deterministic stream of synthetic conversations (workbench.data.synthetic):
    conversation_at(k) is a pure function, so a resumed sampler continues where it stopped."""

    def __init__(self, name: str, conversation_at, weight: float):
        self.name, self.conversation_at, self.weight = name, conversation_at, weight

    def item(self, k: int) -> list[dict[str, Any]]:
        return self.conversation_at(k)


def parse_dataset_spec(spec: str) -> tuple[str, float]:
    """"path:weight" or "synthetic:NAME:weight" -> (source, weight); the weight defaults to 1.
    An optional path keeps its "?" mark ("x.jsonl?:0.5" -> ("x.jsonl?", 0.5))."""
    source, _, weight_text = spec.rpartition(":")
    try:
        weight = float(weight_text)
    except ValueError:
        return spec, 1.0
    if not source or source == "synthetic":  # "synthetic:arith" has no weight; "x.jsonl" neither
        return spec, 1.0
    if not (math.isfinite(weight) and weight > 0):  # inf would crowd out every other dataset, nan never draws
        raise BadInput(f"[sft] datasets: weight must be a finite number > 0 in {spec!r}")
    return source, weight


def synthetic_difficulty(name: str, spec: str) -> int | tuple[int, int]:
    """"arith" mixes difficulties 1-3; "arith-D" fixes difficulty D."""
    from workbench.data.synthetic import MAX_DIFFICULTY

    found = re.fullmatch(r"arith(?:-(\d+))?", name)
    if not found:
        raise BadInput(f"[sft] datasets: unknown synthetic dataset {name!r} in {spec!r} "
                       f"(known: arith, arith-D, chat)")
    if found.group(1) is None:
        return (1, 3)
    level = int(found.group(1))
    if not 1 <= level <= MAX_DIFFICULTY:
        raise BadInput(f"[sft] datasets: difficulty must be 1..{MAX_DIFFICULTY} in {spec!r}")
    return level


def synthetic_source(name: str, spec: str, weight: float, seed: int):
    """A synthetic family by name -> (its dataset, held-out conversations, probes). Held-out data
    comes from its own seed; arithmetic probes carry their answers, chat probes none."""
    from workbench.data import synthetic

    val_seed = seed + SYNTHETIC_VAL_SEED_OFFSET
    if name == "chat":
        held = [synthetic.chat_at(val_seed, i)["messages"] for i in range(SYNTHETIC_VAL_SIZE)]
        dataset = SyntheticDataset(SYNTHETIC_PREFIX + name, lambda k: synthetic.chat_at(seed, k)["messages"], weight)
        return dataset, held, [(messages[:-1], None) for messages in held]
    difficulty = synthetic_difficulty(name, spec)
    problems = synthetic.problems(SYNTHETIC_VAL_SIZE, difficulty, seed=val_seed)
    dataset = SyntheticDataset(SYNTHETIC_PREFIX + name,
                               lambda k: synthetic.problem_at(seed, k, difficulty).conversation()["messages"], weight)
    return dataset, [p.conversation()["messages"] for p in problems], [(p.prompt(), p.answer) for p in problems]


@dataclass
class ChatData:
    """What SFT trains and validates on. `probes` are held-out prompts (the conversation up to its
    last user turn) with the known numeric answer where there is one (synthetic problems, "#### N"
    solutions), taken from each dataset in turn: SFT samples replies to them to measure whether
    the model ends its turns and answers right."""

    train: ChatMixture
    val: list[list[dict[str, Any]]]
    reports: list[LoadReport]
    probes: list[tuple[list[dict[str, Any]], float | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # optional datasets left out, and why


def load_datasets(specs: list[str], resolve_path, seed: int, val_fraction: float = VAL_FRACTION,
                  turn_prefixes=DEFAULT_TURN_PREFIXES) -> ChatData:
    """Build the mixture and the held-out validation conversations from [sft] datasets entries.
    `resolve_path` turns a config path into a Path (Config.resolve_path)."""
    if not specs:
        raise BadInput("[sft] datasets: no datasets given")
    datasets: list = []
    val: list = []
    reports = []
    probe_lists = []
    notes = []
    for spec in specs:
        source, weight = parse_dataset_spec(spec)
        if source.startswith(SYNTHETIC_PREFIX):
            dataset, held_out, probes = synthetic_source(source[len(SYNTHETIC_PREFIX):], spec, weight, seed)
            datasets.append(dataset)
            val += held_out
            probe_lists.append(probes)
            continue
        optional = source.endswith(OPTIONAL_MARK)
        source = source.removesuffix(OPTIONAL_MARK)
        path = resolve_path(source)
        if optional and not path.exists():
            notes.append(f"optional dataset {path} not found: training without it")
            continue
        conversations, report = load_chat_file(path, turn_prefixes)
        reports.append(report)
        order = list(range(len(conversations)))
        random.Random(f"val:{source}").shuffle(order)
        enough = len(conversations) >= MIN_CONVERSATIONS_FOR_VAL
        held = min(MAX_VAL_PER_DATASET, int(len(conversations) * val_fraction)) if enough else 0
        val += [conversations[i] for i in order[:held]]
        probe_lists.append([(conversations[i][:-1], _final_answer(conversations[i][-1])) for i in order[:held]])
        train = [conversations[i] for i in sorted(order[held:])]
        datasets.append(ChatDataset(source, train, weight, seed))
    if not datasets:
        raise BadInput(f"[sft] datasets: none of the optional datasets exists ({'; '.join(notes)})")
    probes = [probe for group in zip_longest(*probe_lists) for probe in group if probe is not None]
    return ChatData(train=ChatMixture(datasets, seed), val=val, reports=reports, probes=probes, notes=notes)


def _final_answer(reply: dict[str, Any]) -> float | None:
    """The number after "####" in a reference reply (GSM8K style), if any."""
    content = reply["content"]
    text = content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")
    number = final_number(text) if "####" in text else None
    return None if number is None else float(number)


class ChatMixture:
    """Draws conversations from several datasets in proportion to their weights.

    Draw i picks its dataset with a generator seeded by (seed, i), and each dataset walks its own
    stream; so the whole position is (draws, per-dataset counts): state_dict / load_state_dict.
    """

    def __init__(self, datasets: list, seed: int):
        self.datasets, self.seed = datasets, seed
        # relative to the largest weight: two weights of 1e308 sum to inf, their shares do not
        largest = max(dataset.weight for dataset in datasets)
        shares = [dataset.weight / largest for dataset in datasets]
        total = sum(shares)
        self.cumulative = []
        running = 0.0
        for share in shares:
            running += share / total
            self.cumulative.append(running)
        self.drawn = 0
        self.counts = {dataset.name: 0 for dataset in datasets}

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        return self

    def __next__(self) -> list[dict[str, Any]]:
        u = random.Random(f"mix:{self.seed}:{self.drawn}").random()
        dataset = self.datasets[-1]
        for candidate, edge in zip(self.datasets, self.cumulative, strict=True):
            if u < edge:
                dataset = candidate
                break
        self.drawn += 1
        k = self.counts[dataset.name]
        self.counts[dataset.name] = k + 1
        return dataset.item(k)

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": self.drawn, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drawn = int(state["drawn"])
        for name, count in state["counts"].items():
            if name in self.counts:
                self.counts[name] = int(count)


# ---------------------------------------------------------------------------------------------
# rendering and batches


@dataclass
class RenderStats:
    conversations: int = 0
    truncated: int = 0  # longer than seq_len + 1 tokens: cut
    skipped: Counter = field(default_factory=Counter)  # not rendered / nothing left to learn

    def as_dict(self) -> dict[str, Any]:
        return {"conversations": self.conversations, "truncated": self.truncated, "skipped": dict(self.skipped)}


def render_row(tokenizer, messages, seq_len: int, stats: RenderStats) -> tuple[list[int], list[int]] | None:
    """(ids, mask) for one conversation, cut to seq_len + 1 tokens; None (counted) when it cannot be
    rendered or keeps no trained token after the cut."""
    try:
        ids, mask = tokenizer.render_conversation(messages)
    except ValueError as error:  # tokenizer.ConversationError
        stats.skipped[f"render: {type(error).__name__}"] += 1
        return None
    if len(ids) > seq_len + 1:
        stats.truncated += 1
        ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
    if not any(mask[1:]):
        stats.skipped["nothing to learn after truncation"] += 1
        return None
    stats.conversations += 1
    return ids, mask


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """Rows of (ids, mask) -> (inputs, targets) LongTensors [B, T], T = longest row - 1; targets are
    -1 where the mask is 0 and on padding."""
    import torch

    width = max(len(ids) for ids, _ in rows) - 1
    inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)
    for row, (ids, mask) in enumerate(rows):
        n = len(ids) - 1
        inputs[row, :n] = torch.tensor(ids[:-1], dtype=torch.long)
        target_ids = torch.tensor(ids[1:], dtype=torch.long)
        trained = torch.tensor(mask[1:], dtype=torch.bool)
        targets[row, :n] = torch.where(trained, target_ids, torch.full_like(target_ids, -1))
    return inputs, targets


class SftBatches:
    """An endless iterator of (inputs, targets) batches of `batch_size` conversations from a mixture.
    state_dict() is the mixture's position (resume continues with the next conversation)."""

    def __init__(self, mixture: ChatMixture, tokenizer, seq_len: int, batch_size: int, device="cpu"):
        self.mixture, self.tokenizer = mixture, tokenizer
        self.seq_len, self.batch_size, self.device = seq_len, batch_size, device
        self.stats = RenderStats()
        self.pad_id = tokenizer.bos_id

    def __iter__(self):
        return self

    def __next__(self):
        rows = []
        attempts = 0
        while len(rows) < self.batch_size:
            attempts += 1
            if attempts > 100 * self.batch_size and not rows:
                raise BadInput("[sft] datasets: no conversation leaves anything to train on at this seq_len")
            row = render_row(self.tokenizer, next(self.mixture), self.seq_len, self.stats)
            if row is not None:
                rows.append(row)
        inputs, targets = collate(rows, self.pad_id)
        return inputs.to(self.device), targets.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"mixture": self.mixture.state_dict(), "render": self.stats.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mixture.load_state_dict(state["mixture"])
        render = state.get("render") or {}
        self.stats.conversations = int(render.get("conversations", 0))
        self.stats.truncated = int(render.get("truncated", 0))
        self.stats.skipped = Counter(render.get("skipped", {}))


def val_batches(conversations, tokenizer, seq_len: int, batch_size: int, device="cpu"):
    """The held-out conversations as a list of (inputs, targets) batches, plus their render stats."""
    stats = RenderStats()
    rows = [row for row in (render_row(tokenizer, m, seq_len, stats) for m in conversations) if row is not None]
    batches = []
    for start in range(0, len(rows), batch_size):
        inputs, targets = collate(rows[start:start + batch_size], tokenizer.bos_id)
        batches.append((inputs.to(device), targets.to(device)))
    return batches, stats
