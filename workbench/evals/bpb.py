"""Bits per byte: the validation loss in a unit that does not depend on the tokenizer.

    bpb = sum over predicted tokens of loss (nats) / (ln 2 * sum of those tokens' UTF-8 bytes)

Targets that are special tokens (<|bos|> and friends, 0 bytes) and ignored targets (-1) count
neither in the numerator nor the denominator, so two models with different vocabularies compare
on the same text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from workbench.errors import BadInput
from workbench.train.common import autocast, resolve_device


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, tokenizer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 device: str | torch.device = "cpu", max_tokens: int | None = None,
                 dtype: str = "auto", dist=None) -> float:
    """Bits per byte of `model` over (inputs, targets) batches, stopping after max_tokens target
    positions (None: all). The model is put in eval mode and back to its previous mode after.
    dist (a DistInfo, world size > 1): each rank passes its own slice of the batches (val_batches
    with rank and world_size) and every rank gets the bpb of all of them; under FSDP, where a
    forward pass needs every rank, a rank with fewer batches runs its first one again, counted
    nowhere."""
    device = torch.device(device)
    batches = list(batches)
    if dist is not None and dist.enabled:
        import torch.distributed as torch_dist

        rounds = torch.tensor(len(batches), device=device)
        torch_dist.all_reduce(rounds, op=torch_dist.ReduceOp.MAX)
        if dist.sharded and batches:
            inputs, targets = batches[0]
            batches += [(inputs, torch.full_like(targets, -1))] * (int(rounds) - len(batches))
    token_bytes = torch.tensor(tokenizer.token_bytes(), dtype=torch.long, device=device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    was_training = model.training
    model.eval()
    try:
        for inputs, targets in batches:
            if max_tokens is not None and seen >= max_tokens:
                break
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast(device, dtype):
                losses = model(inputs, targets, loss_reduction="none")
            valid = targets >= 0
            target_bytes = torch.where(valid, token_bytes[targets.clamp(min=0)], 0)
            counted = target_bytes > 0
            total_nats += (losses.float() * counted).sum(dtype=torch.float64)
            total_bytes += target_bytes.sum()
            seen += targets.numel()
    finally:
        model.train(was_training)
    if dist is not None and dist.enabled:
        import torch.distributed as torch_dist

        torch_dist.all_reduce(total_nats)
        torch_dist.all_reduce(total_bytes)
    if total_bytes.item() == 0:
        raise ValueError("no validation bytes to evaluate (empty validation data?)")
    return total_nats.item() / (math.log(2) * total_bytes.item())


def val_batches(config, tokenizer, batch_size: int, device="cpu", max_tokens: int | None = None,
                rank: int = 0, world_size: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first max_tokens target positions of the val split as packed rows (always the same
    ones: every evaluation of a run compares like with like). Falls back to the train split when
    the data has no val split (val_fraction = 0). With world_size > 1, rank `rank`'s share: every
    world_size-th row of those (evaluate_bpb with dist sums the shares)."""
    from workbench.data.shards import list_shards
    from workbench.train.loader import PackingLoader

    split = "val" if list_shards(config.data_dir, "val") else "train"
    seq_len = config.model.seq_len
    loader = PackingLoader(config.data_dir, split, tokenizer, seq_len, batch_size, loop=False)
    rows, seen = [], 0
    try:
        for inputs, targets in loader:
            if max_tokens is not None and seen >= max_tokens:
                break
            rows += torch.cat([inputs, targets[:, -1:]], dim=1).unbind()
            seen += targets.numel()
    finally:
        loader.close()
    if not rows:
        raise BadInput(f"{config.data_dir / split}: too little data for one {seq_len}-token validation row")
    if len(rows) < world_size:
        raise BadInput(f"{config.data_dir / split}: {len(rows)} validation rows of {seq_len} tokens, fewer than "
                       f"the {world_size} ranks (raise [train] eval_tokens)")
    mine = rows[rank::world_size]
    batches = []
    for start in range(0, len(mine), batch_size):
        batch = torch.stack(mine[start:start + batch_size]).to(device)
        batches.append((batch[:, :-1], batch[:, 1:]))
    return batches


def bpb_for_checkpoint(checkpoint, max_tokens: int | None = None, device: str = "auto",
                       batch_size: int | None = None) -> float:
    """Val bpb of a checkpoint (a folder, a run folder, or a loaded Checkpoint) on the val split of
    the data its config names. max_tokens None: the config's [train] eval_tokens."""
    from workbench.checkpoint import Checkpoint, load_checkpoint

    torch_device = resolve_device(device)
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(Path(checkpoint), device=torch_device)
    else:
        checkpoint.model.to(torch_device)
    config = checkpoint.config
    max_tokens = max_tokens or config.train.eval_tokens
    batch_size = batch_size or config.train.device_batch_size
    batches = val_batches(config, checkpoint.tokenizer, batch_size, torch_device, max_tokens)
    return evaluate_bpb(checkpoint.model, checkpoint.tokenizer, batches, torch_device, max_tokens,
                        dtype=config.train.dtype)
