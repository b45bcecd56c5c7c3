"""Byte-level BPE tokenizer (trained with HF `tokenizers`), special tokens, and chat rendering.

Text is split by a GPT-4 style regex (letters, digit groups of at most 2, punctuation runs, spaces),
each piece is mapped to bytes (all 256 of them are in the initial alphabet, so any Unicode string
round-trips), and BPE merges are learned inside pieces only. The special tokens are added to the
vocabulary as single ids, but plain `encode` never matches them in text: a user who types
"<|bos|>" gets ordinary tokens (the regex also splits "<|bos|>" into "<|", "bos", "|>", so no learned
merge can ever spell a special token). Chat structure is only ever built from ids, by
`render_conversation` and `render_for_completion`.

`train_from_config` trains on the prepared train shards and writes cfg.tokenizer_path (the
`picochat tokenizer CONFIG` verb is workbench/tokenizer_cli.py).
This module never imports torch.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from workbench.errors import BadInput
from workbench.files import atomic_write_text
from workbench.input_files import open_regular

SPECIAL_TOKENS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                  "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>",
                  "<|think_start|>", "<|think_end|>"]
# Each by name: code names a special token through these, never by writing its string.
(BOS, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END, PYTHON_START, PYTHON_END, OUTPUT_START, OUTPUT_END,
 THINK_START, THINK_END) = SPECIAL_TOKENS

# GPT-4's split pattern with digit groups of at most 2 (a small vocab should not spend ids on
# every 3-digit number): contractions, optional non-letter + letters, 1-2 digits, punctuation
# runs, newlines, other whitespace.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")


# tokenizers holds about 100 bytes per character of a string while it pre-tokenizes it (a 20 MB
# one-line document peaked at 2 GB in training, 100 MB at 17.7 GB), so no string it sees, training
# or encoding, may be long; and a batch, whose strings it works on in parallel, is bounded in
# characters as well as in documents.
MAX_PIECE_CHARS = 50_000
MAX_BATCH_CHARS = 1_000_000
# A lone surrogate is no Unicode text to tokenizers (TypeError): Python makes one of each byte a
# terminal passes that is not UTF-8, and a model's calculator call '"\udcff"' returns one.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
BATCH_DOCUMENTS = 256  # typical documents: counting words a batch at a time is ~1.4x faster than one by one
# Where a long text may be cut without changing its tokens: before a whitespace character that
# follows a letter or digit, or before a space or tab (not a line break, which a punctuation run
# takes in) that follows any non-whitespace. SPLIT_PATTERN starts a new piece there in any case.
# Whitespace is Unicode's White_Space, as the pattern's \s means it (Python's \s also takes
# \x1c-\x1f). Searched in a reversed window, so the pair reads (whitespace, what precedes it).
_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE_NOT_CR_LF = "\t\v\f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CUT_BEFORE = re.compile(f"[{_WHITESPACE}][^{_WHITESPACE}\\W_]|[{_WHITESPACE_NOT_CR_LF}][^{_WHITESPACE}]")


def split_long_document(text: str, limit: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of at most `limit` characters that encode to the same tokens as
    the whole (cut where SPLIT_PATTERN breaks anyway, as late as possible), or cut hard at `limit`
    when a window offers no such place (one 50,000-character word). Short texts come back whole."""
    start = 0
    while len(text) - start > limit:
        end = start + limit  # the latest cut allowed; text[end] exists
        window = text[start:end + 1][::-1]  # window[i] is text[end - i]
        found = _CUT_BEFORE.search(window)
        cut = end - found.start() if found else end  # text[cut] is whitespace, text[cut - 1] is not
        yield text[start:cut]
        start = cut
    yield text[start:]


def bounded_batches(texts: Iterable[str]) -> Iterator[list[str]]:
    """Lists of at most BATCH_DOCUMENTS strings of at most MAX_PIECE_CHARS characters each and
    MAX_BATCH_CHARS in all, in order: long documents are cut by split_long_document."""
    batch: list[str] = []
    batch_chars = 0
    for text in texts:
        for piece in split_long_document(text):
            if batch and (len(batch) >= BATCH_DOCUMENTS or batch_chars + len(piece) > MAX_BATCH_CHARS):
                yield batch
                batch, batch_chars = [], 0
            batch.append(piece)
            batch_chars += len(piece)
    if batch:
        yield batch


class ConversationError(ValueError):
    """A conversation that cannot be rendered (roles out of order, empty content, unknown part).
    Deliberately not BadInput: SFT counts and skips such rows instead of stopping."""


class Tokenizer:
    """A trained tokenizer: encode/decode, special ids, per-token byte lengths, chat rendering."""

    def __init__(self, hf: HFTokenizer):
        self._hf = hf
        # Plain text never matches special tokens; they enter a sequence only as ids.
        self._hf.encode_special_tokens = True
        missing = [token for token in SPECIAL_TOKENS if hf.token_to_id(token) is None]
        if missing:
            raise BadInput(f"tokenizer lacks the special tokens {', '.join(missing)}")
        self._special_ids = {token: hf.token_to_id(token) for token in SPECIAL_TOKENS}
        self._special_set = frozenset(self._special_ids.values())
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        self.bos_id: int = self._special_ids["<|bos|>"]
        self._token_bytes: list[int] | None = None
        self._byte_table: list[bytes] | None = None

    # ---- loading and saving ----

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        try:
            with open_regular(path, "tokenizer file") as handle:
                text = handle.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise BadInput(f"{path}: cannot read tokenizer: {error}") from None
        try:
            return cls.from_str(text)
        except BadInput as error:
            raise BadInput(f"{path}: {error}") from None

    @classmethod
    def from_str(cls, json_text: str) -> Tokenizer:
        try:
            hf = HFTokenizer.from_str(json_text)
        except Exception as error:  # tokenizers raises a bare Exception for malformed JSON
            raise BadInput(f"not a valid tokenizer.json ({str(error).splitlines()[0][:200]})") from None
        return cls(hf)

    def to_str(self) -> str:
        return self._hf.to_str()

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (tokenizers.Tokenizer.from_file loads it as is)."""
        atomic_write_text(path, self.to_str())

    @property
    def hf(self) -> HFTokenizer:
        """The underlying tokenizers.Tokenizer (special-token matching in text is off)."""
        return self._hf

    # ---- ids ----

    def special_id(self, token: str) -> int:
        try:
            return self._special_ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a special token (known: {', '.join(SPECIAL_TOKENS)})") from None

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_set

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_set

    def id_to_token(self, token_id: int) -> str | None:
        return self._hf.id_to_token(token_id)

    # ---- encoding and decoding ----

    def encode(self, text: str, bos: bool = False) -> list[int]:
        if len(text) > MAX_PIECE_CHARS:
            return self.encode_batch([text], bos=bos)[0]
        try:
            ids = self._hf.encode(text, add_special_tokens=False).ids
        except TypeError:  # lone surrogates: read as U+FFFD, as a decoder reads bytes it cannot decode
            ids = self._hf.encode(LONE_SURROGATE.sub("\ufffd", text), add_special_tokens=False).ids
        return [self.bos_id, *ids] if bos else ids

    def encode_batch(self, texts: list[str], bos: bool = False) -> list[list[int]]:
        """Many texts at once, in parallel inside tokenizers (much faster than a loop of encode).
        Long texts go through in pieces (split_long_document: same tokens, bounded memory)."""
        texts = list(texts)
        if all(len(text) <= MAX_PIECE_CHARS for text in texts) and sum(map(len, texts)) <= MAX_BATCH_CHARS:
            encodings = self._encode_fast(texts)
            return [[self.bos_id, *encoding.ids] if bos else encoding.ids for encoding in encodings]
        pieces: list[str] = []
        owners: list[int] = []  # the text each piece belongs to
        for index, text in enumerate(texts):
            for piece in split_long_document(text):
                pieces.append(piece)
                owners.append(index)
        out: list[list[int]] = [[self.bos_id] if bos else [] for _ in texts]
        position = 0
        for batch in bounded_batches(pieces):  # pieces are short already: one string each
            for encoding in self._encode_fast(batch):
                out[owners[position]].extend(encoding.ids)
                position += 1
        return out

    def _encode_fast(self, texts: list[str]) -> list:
        try:
            return self._hf.encode_batch_fast(texts, add_special_tokens=False)
        except TypeError:  # lone surrogates: read as U+FFFD, as in encode
            return self._hf.encode_batch_fast([LONE_SURROGATE.sub("\ufffd", text) for text in texts],
                                              add_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; special tokens decode to their own text. A sequence cut inside a UTF-8
        character decodes that character as U+FFFD (use decode_bytes for streaming)."""
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def _bytes_table(self) -> list[bytes]:
        if self._byte_table is None:
            byte_decoder = {char: byte for byte, char in _bytes_to_unicode().items()}
            table = []
            for token_id in range(self.vocab_size):
                token = self._hf.id_to_token(token_id) or ""
                if token_id in self._special_set or any(char not in byte_decoder for char in token):
                    table.append(token.encode("utf-8"))  # specials (and any added plain-text token)
                else:
                    table.append(bytes(byte_decoder[char] for char in token))
            self._byte_table = table
        return self._byte_table

    def token_to_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a special token's text for specials)."""
        return self._bytes_table()[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of the ids: for streaming, where a token may end inside a character."""
        table = self._bytes_table()
        return b"".join(table[token_id] for token_id in ids)

    def token_bytes(self) -> list[int]:
        """UTF-8 byte length of each id's text, 0 for special tokens (for bits per byte)."""
        if self._token_bytes is None:
            self._token_bytes = [0 if token_id in self._special_set else len(raw)
                                 for token_id, raw in enumerate(self._bytes_table())]
        return list(self._token_bytes)

    # ---- chat ----

    def render_conversation(self, messages: list[dict[str, Any]],
                            max_tokens: int | None = None) -> tuple[list[int], list[int]]:
        """Token ids of a whole conversation and the SFT loss mask (1 = trained).

        Trained: the assistant's text, thoughts, tool calls and <|assistant_end|>. Not trained:
        <|bos|>, user turns, <|assistant_start|>, tool output. Raises ConversationError."""
        turns = _normalize_messages(messages)
        if not any(role == "assistant" for role, _ in turns):
            raise ConversationError("conversation has no assistant turn to train on")
        ids: list[int] = [self.bos_id]
        mask: list[int] = [0]

        def add(tokens: list[int], trained: int) -> None:
            ids.extend(tokens)
            mask.extend([trained] * len(tokens))

        for role, parts in turns:
            if role == "user":
                add([self._special_ids["<|user_start|>"]], 0)
                add(self.encode(parts[0][1]), 0)
                add([self._special_ids["<|user_end|>"]], 0)
            else:
                add([self._special_ids["<|assistant_start|>"]], 0)
                for kind, text in parts:
                    if kind == "text":
                        add(self.encode(text), 1)
                    else:
                        start, end = _PART_TOKENS[kind]
                        trained = 0 if kind == "python_output" else 1
                        add([self._special_ids[start]], trained)
                        add(self.encode(text), trained)
                        add([self._special_ids[end]], trained)
                add([self._special_ids["<|assistant_end|>"]], 1)
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def render_for_completion(self, messages: list[dict[str, Any]]) -> list[int]:
        """Ids of a conversation primed for the assistant's reply: ... <|user_end|><|assistant_start|>.
        A final assistant message (a reference answer, as eval tasks carry) is dropped first."""
        messages = list(messages)
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        turns = self.render_turns(messages)
        if messages[-1]["role"] != "user":
            raise ConversationError("a conversation to complete must end with a user message")
        ids = [self.bos_id]
        for turn in turns:
            ids.extend(turn)
        ids.append(self._special_ids["<|assistant_start|>"])
        return ids

    def render_turns(self, messages: list[dict[str, Any]]) -> list[list[int]]:
        """Each turn's ids with its framing, every message encoded once: <|user_start|> ...
        <|user_end|> and <|assistant_start|> ... <|assistant_end|> (a leading system message is
        folded into the first user turn). render_for_completion is <|bos|>, these, <|assistant_start|>;
        a server that must drop old turns to fit the context cuts this list instead of re-encoding."""
        rendered = []
        for role, parts in _normalize_messages(messages):
            if role == "user":
                ids = [self._special_ids["<|user_start|>"], *self.encode(parts[0][1]),
                       self._special_ids["<|user_end|>"]]
            else:
                ids = [self._special_ids["<|assistant_start|>"]]
                for kind, text in parts:
                    if kind == "text":
                        ids.extend(self.encode(text))
                    else:
                        start, end = _PART_TOKENS[kind]
                        ids.append(self._special_ids[start])
                        ids.extend(self.encode(text))
                        ids.append(self._special_ids[end])
                ids.append(self._special_ids["<|assistant_end|>"])
            rendered.append(ids)
        return rendered


_PART_TOKENS = {
    "thinking": ("<|think_start|>", "<|think_end|>"),
    "python": ("<|python_start|>", "<|python_end|>"),
    "python_output": ("<|output_start|>", "<|output_end|>"),
}
_PART_KINDS = ("text", *_PART_TOKENS)


def _content_parts(role: str, content: Any, index: int) -> list[tuple[str, str]]:
    """A message's content as [(kind, text)]; strings are one text part."""
    if isinstance(content, str):
        parts = [("text", content)]
    elif isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise ConversationError(f"message {index}: each content part needs a string 'text'")
            kind = part.get("type", "text")
            if kind not in _PART_KINDS:
                raise ConversationError(f"message {index}: unknown part type {kind!r}")
            if role != "assistant" and kind != "text":
                raise ConversationError(f"message {index}: {role} content may only hold text parts")
            parts.append((kind, part["text"]))
    else:
        raise ConversationError(f"message {index}: content must be a string or a list of parts")
    if not parts or all(not text.strip() for _, text in parts):
        raise ConversationError(f"message {index}: empty {role} content")
    if role != "assistant":  # user and system text is one string
        parts = [("text", "".join(text for _, text in parts))]
    return parts


def _normalize_messages(messages: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """Validate and fold: [(role, parts)] alternating user/assistant, starting with user; a leading
    system message is prepended to the first user message."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("a conversation must be a non-empty list of messages")
    turns: list[tuple[str, list[tuple[str, str]]]] = []
    system_text = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConversationError(f"message {index}: must be an object with role and content")
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ConversationError(f"message {index}: unknown role {role!r}")
        parts = _content_parts(role, message.get("content"), index)
        if role == "system":
            if index != 0:
                raise ConversationError(f"message {index}: a system message may only come first")
            system_text = parts[0][1]
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ConversationError(f"message {index}: expected a {expected} message, got {role}")
        if system_text is not None:
            parts = [("text", f"{system_text}\n\n{parts[0][1]}")]
            system_text = None
        turns.append((role, parts))
    if not turns:
        raise ConversationError("conversation has no user message")
    return turns


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of ByteLevel tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


# ---------------------------------------------------------------------------------------------
# training


def _new_hf_tokenizer() -> HFTokenizer:
    hf = HFTokenizer(models.BPE(byte_fallback=False, unk_token=None, fuse_unk=False))
    hf.normalizer = None
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = None
    return hf


def train_tokenizer(texts: Iterator[str] | Iterable[str], vocab_size: int, min_frequency: int = 2,
                    show_progress: bool = False) -> Tokenizer:
    """Train byte-level BPE on an iterator of documents; vocab_size counts the 256 byte tokens and
    the special tokens too."""
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise BadInput(f"vocab_size {vocab_size} is too small: it must be at least {minimum} "
                       f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    hf = _new_hf_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS,
    )
    hf.train_from_iterator(bounded_batches(texts), trainer=trainer)
    return Tokenizer(hf)


def _limited(texts: Iterable[str], max_chars: int, counter: dict[str, int]) -> Iterator[str]:
    """Yield documents until max_chars characters have been fed (the last one cut to fit)."""
    for text in texts:
        room = max_chars - counter["chars"]
        if room <= 0:
            return
        if len(text) > room:
            text = text[:room]
        counter["chars"] += len(text)
        counter["documents"] += 1
        yield text


def measure(tokenizer: Tokenizer, texts: Iterable[str], max_chars: int = 20_000_000) -> dict[str, float]:
    """Compression on some texts (the first max_chars characters): chars per token and bytes per
    token. Encoding holds memory per character like training does, so it goes in bounded batches."""
    chars = nbytes = tokens = 0
    for batch in bounded_batches(_limited(texts, max_chars, {"chars": 0, "documents": 0})):
        tokens += sum(len(ids) for ids in tokenizer.encode_batch(batch))
        chars += sum(len(text) for text in batch)
        nbytes += sum(len(text.encode("utf-8")) for text in batch)
    return {"chars": chars, "bytes": nbytes, "tokens": tokens,
            "chars_per_token": chars / tokens if tokens else 0.0,
            "bytes_per_token": nbytes / tokens if tokens else 0.0}


# ---------------------------------------------------------------------------------------------
# training from a config (what `picochat tokenizer CONFIG` runs)


def train_from_config(cfg: Any, writer: Any = None, verbose: bool = False) -> dict[str, Any]:
    """Train on cfg.data_dir's train shards, save cfg.tokenizer_path, return the final record.
    The writer (a RunWriter) gets progress records, events and a final "tokenizer" record."""
    from workbench.data import shards

    data_dir = cfg.data_dir
    try:
        if not shards.list_shards(data_dir, "train"):
            raise BadInput(f"{data_dir}: no prepared training data; run `picochat prepare CONFIG` first")
        manifest = shards.read_manifest(data_dir)
        available = int(manifest.get("splits", {}).get("train", {}).get("chars") or 0)
        limit = cfg.tokenizer.max_train_chars
        total = min(limit, available) if available else limit
        counter = {"chars": 0, "documents": 0}
        last_report = [0.0]

        def fed() -> Iterator[str]:
            for text in _limited((text for text, _ in shards.iter_documents(data_dir, "train")), limit, counter):
                now = time.time()
                if writer is not None and now - last_report[0] > 0.5:
                    last_report[0] = now
                    writer.progress(counter["chars"], total, "chars")
                yield text
            if writer is not None:
                writer.progress(counter["chars"], total, "chars")
                writer.event(f"read {counter['chars']:,} chars in {counter['documents']:,} documents; "
                             "computing merges")

        if writer is not None:
            writer.write_status(state="running")
            writer.event(f"training a {cfg.tokenizer.vocab_size}-token BPE on up to {total:,} chars of {data_dir}")
        started = time.time()
        tokenizer = train_tokenizer(fed(), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency,
                                    show_progress=verbose and sys.stderr.isatty())
        train_seconds = time.time() - started
        if writer is not None:
            writer.progress(counter["chars"], total, "chars")
        tokenizer.save(cfg.tokenizer_path)
        split = "val" if shards.list_shards(data_dir, "val") else "train"
        stats = measure(tokenizer, (text for text, _ in shards.iter_documents(data_dir, split)))
        record = {
            "vocab_size": tokenizer.vocab_size,
            "vocab_size_requested": cfg.tokenizer.vocab_size,
            "chars_per_token": round(stats["chars_per_token"], 4),
            "bytes_per_token": round(stats["bytes_per_token"], 4),
            "measured_on": split,
            "train_seconds": round(train_seconds, 3),
            "train_chars": counter["chars"],
            "train_documents": counter["documents"],
            "path": str(cfg.tokenizer_path),
        }
        if tokenizer.vocab_size < cfg.tokenizer.vocab_size:
            # BPE stops when no pair is left that occurs min_frequency times: the corpus is too small
            record["warning"] = (f"vocab reached only {tokenizer.vocab_size} of the {cfg.tokenizer.vocab_size} "
                                 f"asked for: {counter['chars']:,} chars of training text hold no more pairs seen "
                                 f"{cfg.tokenizer.min_frequency}+ times (add data or lower [tokenizer] vocab_size)")
            if writer is not None:
                writer.event(record["warning"])
        if writer is not None:
            writer.log("tokenizer", **record)
            writer.finish("done", f"vocab {tokenizer.vocab_size}, {record['chars_per_token']:.2f} chars/token")
        return record
    except BadInput as error:
        if writer is not None:
            writer.finish("failed", str(error))
        raise
    except BaseException as error:
        if writer is not None:
            writer.finish("failed", f"{type(error).__name__}: {error}")
        raise
