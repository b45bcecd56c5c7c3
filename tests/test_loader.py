"""The packing loader: documents packed into rows exactly, deterministic, resumable mid-document,
looping over epochs (data streams split among ranks: tests/test_distributed.py)."""

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.data.shards import iter_documents
from workbench.errors import BadInput
from workbench.train.loader import PackingLoader

SEQ = 16


def write_shards(data_dir, docs_per_shard, row_group_rows=3):
    """A data folder in prepare's layout: train/shard_NNNNN.parquet with a text column."""
    (data_dir / "train").mkdir(parents=True)
    for index, docs in enumerate(docs_per_shard):
        table = pa.table({"text": docs})
        pq.write_table(table, data_dir / "train" / f"shard_{index:05d}.parquet", row_group_size=row_group_rows)
    return data_dir


@pytest.fixture
def small_data(tmp_path):
    """Three shards of short documents of very different lengths (some shorter than a row,
    one several rows long), so rows span documents and shards."""
    docs = [f"doc {i}: " + " ".join(["word"] * (i * 7 % 23 + 1)) for i in range(20)]
    docs[5] = "a long one " + "lorem ipsum dolor sit amet " * 12
    return write_shards(tmp_path / "data", [docs[:7], docs[7:15], docs[15:]])


def token_stream(data_dir, tokenizer, split="train"):
    stream = []
    for text, _ in iter_documents(data_dir, split):
        stream += tokenizer.encode(text, bos=True)
    return stream


def take_rows(loader, count):
    rows = []
    for _ in range(count):
        inputs, targets = next(loader)
        assert (inputs[:, 1:] == targets[:, :-1]).all()  # targets are inputs shifted by one
        rows += [inp.tolist() + [tgt[-1].item()] for inp, tgt in zip(inputs, targets, strict=True)]
    return rows


def test_rows_are_the_document_stream_cut_into_seq_len_plus_one(small_data, tiny_tokenizer):
    stream = token_stream(small_data, tiny_tokenizer)
    loader = PackingLoader(small_data, "train", tiny_tokenizer, SEQ, batch_size=2, docs_per_batch=4)
    rows = take_rows(loader, 5)
    loader.close()
    assert all(len(row) == SEQ + 1 for row in rows)
    flat = [token for row in rows for token in row]
    assert flat == stream[: len(flat)]
    assert stream[0] == tiny_tokenizer.bos_id and stream.count(tiny_tokenizer.bos_id) == 20


def test_epochs_loop_over_the_data(small_data, tiny_tokenizer):
    stream = token_stream(small_data, tiny_tokenizer)
    rows_needed = 2 * len(stream) // (SEQ + 1) + 3  # well into the third epoch
    loader = PackingLoader(small_data, "train", tiny_tokenizer, SEQ, batch_size=1)
    flat = [token for row in take_rows(loader, rows_needed) for token in row]
    loader.close()
    assert flat == (stream * 3)[: len(flat)]
    assert loader.state_dict()["positions"]["0"]["epoch"] == 2


@pytest.mark.parametrize("batches_before", [0, 1, 2, 3, 7, 11])
def test_resume_continues_exactly(small_data, tiny_tokenizer, batches_before):
    reference = PackingLoader(small_data, "train", tiny_tokenizer, SEQ, batch_size=3, docs_per_batch=2)
    expected = take_rows(reference, batches_before + 4)
    reference.close()

    first = PackingLoader(small_data, "train", tiny_tokenizer, SEQ, batch_size=3, docs_per_batch=2)
    take_rows(first, batches_before)
    state = json.loads(json.dumps(first.state_dict()))  # it goes through meta.json
    first.close()
    resumed = PackingLoader(small_data, "train", tiny_tokenizer, SEQ, batch_size=3, state=state)
    assert take_rows(resumed, 4) == expected[3 * batches_before:]
    resumed.close()


def test_validation_mode_stops_at_the_end(small_data, tiny_tokenizer):
    stream = token_stream(small_data, tiny_tokenizer)
    loader = PackingLoader(small_data, "train", tiny_tokenizer, SEQ, batch_size=4, loop=False)
    batches = list(loader)
    assert next(loader, None) is None and next(loader, None) is None  # stays finished, never hangs
    total_rows = len(stream) // (SEQ + 1)
    assert sum(inputs.shape[0] for inputs, _ in batches) == total_rows
    assert batches[-1][0].shape[0] == (total_rows % 4 or 4)


def test_missing_split_is_bad_input(tmp_path, tiny_tokenizer):
    with pytest.raises(BadInput, match="picochat prepare"):
        PackingLoader(tmp_path / "nothing", "train", tiny_tokenizer, SEQ, batch_size=2)


def test_real_prepared_data(tiny_data, tiny_tokenizer):
    loader = PackingLoader(tiny_data, "val", tiny_tokenizer, 64, batch_size=8, loop=False)
    inputs, targets = next(loader)
    loader.close()
    assert inputs.shape == targets.shape == (8, 64)
    assert inputs[0, 0].item() == tiny_tokenizer.bos_id
    assert int(inputs.max()) < tiny_tokenizer.vocab_size


class CountingTokenizer:
    """The real tokenizer, counting how many documents it was asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.documents = tokenizer, 0

    def encode_batch(self, texts, bos=False):
        self.documents += len(texts)
        return self.tokenizer.encode_batch(texts, bos=bos)


def test_one_long_document_is_not_tokenized_prefetch_times_ahead(tmp_path, tiny_tokenizer):
    """A corpus kept as one document (configs/shakespeare.toml): the read-ahead is bounded in tokens,
    so while the first rows are used the text is encoded at most once more, not once per queue slot."""
    data = write_shards(tmp_path / "data", [["to be or not to be, that is the question " * 400]])
    counting = CountingTokenizer(tiny_tokenizer)
    loader = PackingLoader(data, "train", counting, SEQ, batch_size=2, docs_per_batch=4, prefetch=8)
    rows = take_rows(loader, 3)
    time.sleep(0.5)  # an unbounded reader fills all 8 queue slots meanwhile
    loader.close()
    assert rows and counting.documents <= 2
