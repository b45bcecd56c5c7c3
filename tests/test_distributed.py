"""Many ranks on the CPU: data streams each rank reads alone, evaluation split among ranks, FSDP2
with a sharded Muon against one process, checkpoints that cross between the two, and the peak
FLOPs table. The torchrun tests are slow-marked (extra torch processes)."""

import json
import os
import subprocess
import sys
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from workbench import runs
from workbench.data.shards import iter_documents
from workbench.errors import BadInput
from workbench.train.common import gpu_peak_flops, peak_flops
from workbench.train.loader import PackingLoader, merge_states

SEQ = 16


@pytest.fixture
def grouped_data(tmp_path):
    """Two shards in row groups of 3 documents (7 groups), lengths varied so rows span documents."""
    docs = [f"doc {i}: " + " ".join(["word"] * (i * 7 % 23 + 1)) for i in range(21)]
    (tmp_path / "data" / "train").mkdir(parents=True)
    for index, part in enumerate((docs[:12], docs[12:])):
        pq.write_table(pa.table({"text": part}), tmp_path / "data" / "train" / f"shard_{index:05d}.parquet",
                       row_group_size=3)
    return tmp_path / "data"


def rows_of(loader, batches):
    rows = []
    for _ in range(batches):
        inputs, targets = next(loader)
        rows += [i.tolist() + [t[-1].item()] for i, t in zip(inputs, targets, strict=True)]
    return rows


def test_each_stream_reads_its_own_row_groups(grouped_data):
    """Row group g goes to stream g mod 2, across shard boundaries (shard 0 has 4 groups)."""
    positions = [[pos for _, pos in iter_documents(grouped_data, "train", stride=(s, 2))] for s in range(2)]
    assert positions[0][:6] == [(0, 0), (0, 1), (0, 2), (0, 6), (0, 7), (0, 8)]
    assert positions[1][:3] == [(0, 3), (0, 4), (0, 5)] and (1, 0) in positions[0] and (1, 3) in positions[1]
    everything = sorted(pos for _, pos in iter_documents(grouped_data, "train"))
    assert sorted(positions[0] + positions[1]) == everything and len(everything) == 21
    # resuming inside the second shard keeps counting row groups from the split's start
    assert [pos for _, pos in iter_documents(grouped_data, "train", start=(1, 0), stride=(1, 2))][0] == (1, 3)


def test_two_ranks_rows_are_the_one_rank_stream(grouped_data, tiny_tokenizer):
    """One process with 2 streams (taking micro-batches from them in turn) reads exactly the rows
    2 ranks read together, batch for batch, each rank touching only its own row groups."""
    single = PackingLoader(grouped_data, "train", tiny_tokenizer, SEQ, batch_size=2, streams=2)
    one = [rows_of(single, 1) for _ in range(10)]  # 5 steps x 2 micro-batches
    ranks = [PackingLoader(grouped_data, "train", tiny_tokenizer, SEQ, batch_size=2, rank=r, world_size=2)
             for r in range(2)]
    two = [[rows_of(loader, 1) for _ in range(5)] for loader in ranks]
    assert one[0::2] == two[0] and one[1::2] == two[1]
    assert one[0] != one[1]
    assert merge_states([loader.state_dict() for loader in ranks]) == single.state_dict()
    for loader in (single, *ranks):
        loader.close()


@pytest.mark.parametrize("batches_before", [0, 3, 8])
def test_each_rank_resumes_exactly_from_the_merged_state(grouped_data, tiny_tokenizer, batches_before):
    def loaders(state=None):
        return [PackingLoader(grouped_data, "train", tiny_tokenizer, SEQ, batch_size=2, rank=r, world_size=2,
                              state=state) for r in range(2)]

    reference = loaders()
    expected = [rows_of(loader, batches_before + 4)[2 * batches_before:] for loader in reference]
    first = loaders()
    for loader in first:
        rows_of(loader, batches_before)
    state = json.loads(json.dumps(merge_states([loader.state_dict() for loader in first])))  # via meta.json
    resumed = loaders(state)
    assert [rows_of(loader, 4) for loader in resumed] == expected
    # the same state resumes one process reading both streams
    single = PackingLoader(grouped_data, "train", tiny_tokenizer, SEQ, batch_size=2, streams=2, state=state)
    assert [rows_of(single, 1) for _ in range(8)][0::2] == [expected[0][i:i + 2] for i in range(0, 8, 2)]
    for loader in (*reference, *first, *resumed, single):
        loader.close()


def test_a_state_for_other_streams_is_bad_input(grouped_data, tiny_tokenizer):
    loader = PackingLoader(grouped_data, "train", tiny_tokenizer, SEQ, batch_size=2, streams=2)
    state = loader.state_dict()
    loader.close()
    with pytest.raises(BadInput, match="2 data streams, this run reads 4.*data_streams = 2"):
        PackingLoader(grouped_data, "train", tiny_tokenizer, SEQ, batch_size=2, streams=4, state=state)


def test_more_streams_than_row_groups_is_one_line(grouped_data, tiny_tokenizer):
    loader = PackingLoader(grouped_data, "train", tiny_tokenizer, SEQ, batch_size=2, rank=7, world_size=8)
    with pytest.raises(BadInput, match="data stream 7 of 8 has no documents"):
        next(loader)
    loader.close()


# ---------------------------------------------------------------------------------------------
# peak FLOPs by exact device name


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA A10G", 70e12), ("NVIDIA L4", 121e12), ("NVIDIA GeForce RTX 4090", 165e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA B200", 2250e12),
    ("AMD Instinct MI300X", 1307e12), ("nvidia  h100 pcie", 756e12),
])
def test_gpu_peaks_by_exact_name(name, peak):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gpu_peak_flops(name) == peak


def test_an_unknown_gpu_has_no_peak_and_a_warning():
    for name in ("NVIDIA H100", "NVIDIA A10G-X", "Some Future GPU"):  # a prefix of a known name is not it
        with pytest.warns(UserWarning, match="no peak FLOP/s known"):
            assert gpu_peak_flops(name) is None
    with pytest.warns(UserWarning):
        assert peak_flops("cuda", "Some Other GPU") is None


# ---------------------------------------------------------------------------------------------
# torchrun: 2 gloo processes against 1


def torchrun(config_path, *extra, processes=2):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "workbench.cli", "pretrain", str(config_path), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def train_losses(run_dir):
    return [record["loss"] for record in runs.read_metrics(run_dir, kind="train")]


# 16 rows of 64 tokens per step over 2 data streams: 1 process = 2 micro-batches of 8 (one per
# stream), 2 processes = 8 rows each from its own stream: the same rows, the same global batch.
TWO_STREAMS = {"total_batch_tokens": 1024, "device_batch_size": 8, "data_streams": 2, "eval_every": 4,
               "keep_last": 0, "sample_every": 1}


@pytest.mark.slow  # two torchrun launches and two 1-process runs: ~60 s on 2 cores
def test_fsdp_two_processes_match_one_and_checkpoints_cross_modes(make_tiny_config):
    from workbench.checkpoint import load_checkpoint
    from workbench.train.pretrain import pretrain

    model = {"depth": 2, "window_pattern": "SL", "short_window": 24}
    single = make_tiny_config(model=model, train={**TWO_STREAMS, "steps": 8, "save_every": 4})
    pretrain(single, verbose=False)
    sharded = make_tiny_config(model=model, train={**TWO_STREAMS, "steps": 8, "save_every": 4,
                                                   "distributed": "fsdp"})
    result = torchrun(sharded.base_dir / "config.toml")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    one, two = train_losses(single.out_dir), train_losses(sharded.out_dir)
    assert len(one) == len(two) == 8
    for a, b in zip(one, two, strict=True):
        assert b == pytest.approx(a, rel=2e-3)
    evals = [runs.read_metrics(cfg.out_dir, kind="eval")[-1]["val_bpb"] for cfg in (single, sharded)]
    assert evals[1] == pytest.approx(evals[0], rel=2e-3)  # evaluation split between the ranks
    assert runs.read_metrics(sharded.out_dir, kind="sample")  # samples run on every rank under FSDP
    sys_record = runs.read_metrics(sharded.out_dir, kind="sys")[0]
    assert sys_record["world_size"] == 2 and sys_record["distributed"] == "fsdp"
    assert runs.read_metrics(sharded.out_dir, kind="train")[-1]["peak_memory"] > 0

    # an FSDP checkpoint is the same files: it loads in one process, whole, with the whole optimizer state
    fsdp_checkpoint = load_checkpoint(sharded.out_dir / "checkpoints" / "step_000004", with_optimizer=True)
    plain_checkpoint = load_checkpoint(single.out_dir / "checkpoints" / "step_000004", with_optimizer=True)
    for name, tensor in plain_checkpoint.model.state_dict().items():
        assert torch.allclose(fsdp_checkpoint.model.state_dict()[name], tensor, atol=2e-3, rtol=2e-2), name
    assert fsdp_checkpoint.optimizer_tensors.keys() == plain_checkpoint.optimizer_tensors.keys()
    assert fsdp_checkpoint.meta["loader_state"] == plain_checkpoint.meta["loader_state"]

    # resume across modes from step 4: the FSDP run's checkpoint in one process, and the
    # one-process checkpoint under FSDP; both continue the uninterrupted curves
    for source, mode in ((sharded, "ddp"), (single, "fsdp")):
        resumed = make_tiny_config(model=model, train={**TWO_STREAMS, "steps": 8, "save_every": 4,
                                                       "distributed": mode})
        (resumed.out_dir / "checkpoints").mkdir(parents=True)
        import shutil

        shutil.copytree(source.out_dir / "checkpoints" / "step_000004",
                        resumed.out_dir / "checkpoints" / "step_000004")
        if mode == "fsdp":
            outcome = torchrun(resumed.base_dir / "config.toml", "--resume")
            assert outcome.returncode == 0, outcome.stdout[-2000:] + outcome.stderr[-3000:]
        else:
            pretrain(resumed, resume=True, verbose=False)
        continued = train_losses(resumed.out_dir)
        expected = train_losses(source.out_dir)[4:]
        assert len(continued) == 4
        for a, b in zip(expected, continued, strict=True):
            assert b == pytest.approx(a, rel=2e-3)


@pytest.mark.slow  # one torchrun launch: ~15 s
def test_two_ranks_evaluate_the_one_rank_bpb(tiny_checkpoint, tmp_path):
    """Each rank evaluates every other validation row; the all-reduced bpb is the 1-rank one."""
    script = tmp_path / "bpb.py"
    script.write_text(f"""
import json, sys
import torch.distributed as dist
from workbench.evals.bpb import evaluate_bpb, val_batches
from workbench.checkpoint import load_checkpoint
from workbench.train.common import setup_distributed
info = setup_distributed("cpu")
checkpoint = load_checkpoint({str(tiny_checkpoint)!r})
batches = val_batches(checkpoint.config, checkpoint.tokenizer, 3, "cpu", 4096, info.rank, info.world_size)
bpb = evaluate_bpb(checkpoint.model, checkpoint.tokenizer, batches, dist=info)
if info.rank == 0:
    print("BPB", json.dumps(bpb))
dist.barrier()  # both ranks done before teardown: gloo aborted a rank once when one tore down first
dist.destroy_process_group()
""")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two_ranks = json.loads(result.stdout.split("BPB", 1)[1])

    from workbench.checkpoint import load_checkpoint
    from workbench.evals.bpb import evaluate_bpb, val_batches

    checkpoint = load_checkpoint(tiny_checkpoint)
    one_rank = evaluate_bpb(checkpoint.model, checkpoint.tokenizer,
                            val_batches(checkpoint.config, checkpoint.tokenizer, 3, "cpu", 4096))
    assert two_ranks == pytest.approx(one_rank, rel=1e-6)
