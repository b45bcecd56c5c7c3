"""`picochat quantize CHECKPOINT [--out PATH]`: write an INT8 copy of a checkpoint and compare it
with the original (file size, batch-1 decode speed, validation bpb).

The format is workbench.checkpoint's (quantize_checkpoint, load_int8_state); the layers are
workbench.int8's.
"""

from __future__ import annotations

import argparse

from workbench.errors import BadInput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/int8/step_N)")
    parser.add_argument("--eval-tokens", type=int, default=32768,
                        help="validation tokens for the bpb comparison (0: skip it)")
    parser.add_argument("--decode-tokens", type=int, default=64, help="tokens for the decode speed comparison")


def run(args: argparse.Namespace) -> int:
    from workbench.checkpoint import load_checkpoint, quantize_checkpoint
    from workbench.checkpoint_files import merge_evals, resolve_checkpoint

    source = resolve_checkpoint(args.checkpoint)
    out = quantize_checkpoint(source, args.out)
    original_bytes = (source / "model.safetensors").stat().st_size
    int8_bytes = (out / "model.safetensors").stat().st_size
    print(f"wrote {out}")
    print(f"model.safetensors: {original_bytes / 1e6:.2f} MB -> {int8_bytes / 1e6:.2f} MB "
          f"({int8_bytes / original_bytes:.2f}x)")
    original, quantized = load_checkpoint(source), load_checkpoint(out)
    if args.decode_tokens > 0:
        try:
            speeds = [decode_speed(c.model, args.decode_tokens) for c in (original, quantized)]
        except ValueError as error:  # the model's context cannot hold the test (a small seq_len)
            print(f"decode speed: skipped ({error}; lower --decode-tokens)")
        else:
            print(f"decode, batch 1, cpu: {speeds[0]:.1f} tok/s -> {speeds[1]:.1f} tok/s "
                  f"({speeds[1] / speeds[0]:.2f}x)")
    if args.eval_tokens > 0:
        try:
            bpbs = [validation_bpb(c, args.eval_tokens) for c in (original, quantized)]
        except (BadInput, ValueError) as error:
            print(f"bpb: skipped ({error})")
        else:
            print(f"val bpb: {bpbs[0]:.4f} -> {bpbs[1]:.4f} (difference {bpbs[1] - bpbs[0]:+.4f})")
            # kept with the copy, as `picochat eval --tasks bpb` keeps it: the Checkpoints and Evals screens show it
            merge_evals(out, {"bpb": {"bpb": bpbs[1], "tokens": args.eval_tokens, "original_bpb": bpbs[0],
                                      "measured_by": "quantize"}})
    return 0


def decode_speed(model, tokens: int) -> float:
    """Batch-1 decode tokens/s with the KV cache."""
    from workbench.engine.engine import measure_speed

    return measure_speed(model, prompt_tokens=16, new_tokens=tokens)["decode_tokens_per_second"]


def validation_bpb(checkpoint, max_tokens: int) -> float:
    from workbench.evals.bpb import evaluate_bpb, val_batches

    batches = val_batches(checkpoint.config, checkpoint.tokenizer, batch_size=8, max_tokens=max_tokens)
    return evaluate_bpb(checkpoint.model, checkpoint.tokenizer, batches, "cpu", max_tokens, dtype="float32")
