"""Tokenizer speed: BPE training MB/s, and encode MB/s one text at a time vs encode_batch.

    python bench/tokenizer.py [--data FILE] [--vocab-size 8192] [--repeat 3]

Documents are the blank-line paragraphs of Tiny Shakespeare, split train/val by the same hash
`picochat prepare` uses. Prints one line; best of --repeat runs for each figure.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from workbench.data.prepare import val_score  # noqa: E402
from workbench.tokenizer import train_tokenizer  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.exists()
                        else REPO / "assets" / "tiny_corpus.txt")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    text = args.data.read_text(encoding="utf-8")
    documents = [doc for doc in text.split("\n\n") if doc.strip()]
    val = [doc for doc in documents if val_score(hashlib.sha1(doc.encode()).digest()) < 0.05]
    train = [doc for doc in documents if val_score(hashlib.sha1(doc.encode()).digest()) >= 0.05]
    train_mb = sum(len(doc.encode()) for doc in train) / 1e6
    all_mb = sum(len(doc.encode()) for doc in documents) / 1e6

    def best(function) -> tuple[float, object]:
        times, result = [], None
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = function()
            times.append(time.perf_counter() - started)
        return min(times), result

    train_seconds, tokenizer = best(lambda: train_tokenizer(iter(train), args.vocab_size))
    loop_seconds, _ = best(lambda: [tokenizer.encode(doc) for doc in documents])
    batch_seconds, batches = best(lambda: tokenizer.encode_batch(documents))
    val_tokens = sum(len(ids) for ids in tokenizer.encode_batch(val))
    val_chars = sum(len(doc) for doc in val)
    tokens = sum(len(ids) for ids in batches)
    print(f"tokenizer {args.data.name} vocab {args.vocab_size}: train {train_mb / train_seconds:.2f} MB/s "
          f"({train_seconds:.2f}s for {train_mb:.2f} MB), encode loop {all_mb / loop_seconds:.2f} MB/s, "
          f"encode_batch {all_mb / batch_seconds:.2f} MB/s ({loop_seconds / batch_seconds:.1f}x), "
          f"{tokens / batch_seconds / 1e6:.2f} M tokens/s, val {val_chars / val_tokens:.2f} chars/token")


if __name__ == "__main__":
    main()
