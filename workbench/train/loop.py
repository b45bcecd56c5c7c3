"""The training loop: one visible loop shared by pretraining and SFT (GRPO reuses its pieces).

Each iteration of `train` is one optimizer step:

    1. step boundary: apply control files (stop / pause / resume / save) and SIGTERM / SIGINT
    2. gradient accumulation: grad_accum_steps micro-batches of forward + backward
       (bf16 autocast on GPU, DDP gradient sync only on the last micro-batch)
    3. clip gradients, set the scheduled learning rate, optimizer step
    4. log a "train" record and the status.json heartbeat
    5. checkpoint every save_every steps and at the end, THEN evaluate every eval_every steps
       (saving first: an evaluation that crashes or runs out of memory must never cost the
       training since the last checkpoint; an eval failure is logged as an event, never fatal)

How a stage uses it (pretrain.py is the reference):
- build the model and `optim.build_optimizer(model, cfg.train, lr_scale)`, restore a checkpoint
  when resuming (model, optimizer tensors, RNG states via common.restore_rng_states, and the data
  position), then call `train(...)` with start_step / tokens_seen from the checkpoint's meta.
- train_batches: an iterator of (inputs, targets) LongTensors [B, T] on the device, endless (the
  loop takes exactly grad_accum_steps batches per step and never reads ahead, so the data
  position saved with a checkpoint is exact). Pretraining passes the packing loader; SFT passes
  its own padded chat batches whose targets are -1 wherever the loss must not train (user turns,
  tool output, padding): the model's cross-entropy ignores -1.
- val_fn(model) -> {"val_bpb": ...} (any floats; "val_bpb" feeds best_val_bpb). Pretraining
  measures bits per byte on the val split; SFT can return its own held-out loss and bpb.
- extra_meta_fn() -> dict merged into every checkpoint's meta.json: the data position
  ({"loader_state": loader.state_dict()}) or SFT's sampler state, so --resume continues exactly.
The caller owns the RunWriter: it finishes the run ("done" / "failed") after `train` returns.
"""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from workbench.checkpoint import save_checkpoint
from workbench.checkpoint_files import update_meta
from workbench.optim import lr_multiplier
from workbench.train.common import (
    DistInfo,
    autocast,
    capture_rng_states,
    device_memory,
    device_total_memory,
    dtype_name,
    full_state_dict,
    peak_flops,
    synchronize,
    use_compile,
)

PAUSE_POLL_SECONDS = 0.25
BUDGET_MEASURE_STEPS = 8  # steps timed (after the first, which pays for warm-up) to fix a budget's steps
BUDGET_MEASURE_FRACTION = 0.1  # ... and at least this fraction of the budget; the speed is the second half's
BUDGET_OPEN_STEPS = 10**9  # total_steps while a time budget is measured: no warmdown yet


class TimeBudget:
    """[train] time_budget: time the first steps, then fix total_steps once so the schedule's
    warmup and warmdown fit the budget. The budget covers the training loop, evaluations
    included (the evaluation at step 0 is timed too; every eval_every steps costs one more).
    The speed comes from the second half of the timed stretch: start-up bursts (the data
    loader tokenizing ahead, allocator warm-up) land in the first and would cut the run short.
    The chosen total_steps goes into status.json and every checkpoint's meta.json: a resumed run
    reads it back instead of measuring again, so its schedule (and loss curve) is the same."""

    clock = staticmethod(time.monotonic)

    def __init__(self, seconds: float, eval_every: int):
        self.seconds, self.eval_every = seconds, eval_every
        self.started = self.clock()
        self.eval_seconds = 0.0
        self.timed: list[tuple[int, float]] = []  # (step, time) after each step while measuring

    def evaluated_at_start(self) -> None:
        self.eval_seconds = self.clock() - self.started

    def left(self) -> float:
        return max(0.0, self.seconds - (self.clock() - self.started))

    def steps_if_ready(self, step: int) -> int | None:
        """Call after each step; returns the total steps once enough steps have been timed."""
        now = self.clock()
        self.timed.append((step, now))
        first_step, first_time = self.timed[0]
        measured_enough = (step - first_step >= BUDGET_MEASURE_STEPS
                           and now - first_time >= BUDGET_MEASURE_FRACTION * self.seconds)
        if not measured_enough and now - self.started < self.seconds:
            return None
        middle_step, middle_time = self.timed[len(self.timed) // 2]
        if middle_step == step:
            middle_step, middle_time = first_step, first_time
        step_seconds = (now - middle_time) / (step - middle_step) if step > middle_step else now - self.started
        left = self.seconds - (now - self.started) - self.eval_seconds  # keep the final evaluation's time
        more = int(left / (step_seconds + self.eval_seconds / self.eval_every)) if left > 0 else 0
        return step + max(0, more)


@dataclass
class TrainResult:
    step: int  # optimizer steps done (including those before a resume)
    tokens: int  # training tokens seen
    stopped: bool  # True when a stop command or a signal ended the run before total_steps
    best_val_bpb: float | None
    last_checkpoint: Path | None
    last_loss: float | None
    seconds: float


class _QuietWriter:
    """What ranks other than 0 get instead of a RunWriter: only rank 0 writes the run folder."""

    def __getattr__(self, name):
        if name == "poll_control":
            return lambda: []
        return lambda *args, **kwargs: None


class _Signals:
    """SIGTERM / SIGINT ask for a clean stop at the next step boundary (checkpoint, exit 0); a
    second SIGINT interrupts at once."""

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _wait_while_paused(writer, signals: _Signals, step: int, checkpoint: Callable[[int], None]) -> bool:
    """Block until a resume or stop command (or a signal); "save" checkpoints meanwhile.
    Returns True when the run should stop."""
    writer.write_status(state="paused", message=f"paused at step {step}")
    writer.event(f"paused at step {step}")
    paused_at = time.time()
    while True:
        time.sleep(PAUSE_POLL_SECONDS)
        writer.heartbeat(step)  # alive while paused: not "stalled"
        commands = writer.poll_control()
        stop = "stop" in commands or signals.requested is not None
        if "save" in commands and not stop:
            checkpoint(step)
        if stop or "resume" in commands:
            break
    writer.paused_for(time.time() - paused_at)  # the ETA counts training time, not the pause
    writer.write_status(state="running", message="")
    writer.event(f"stop requested at step {step}" if stop else f"resumed at step {step}")
    return stop


def _broadcast_flags(flags: list[int], dist: DistInfo, device: torch.device) -> list[int]:
    """Rank 0 decides (control files, signals); every rank follows."""
    if not dist.enabled:
        return flags
    tensor = torch.tensor(flags, dtype=torch.long, device=device)
    torch_dist.broadcast(tensor, 0)
    return tensor.tolist()


class StepBoundary:
    """What every training loop does between two steps (pretraining and SFT here, GRPO in
    grpo.py): obey the run folder's control files (stop, save, pause until resume) and
    SIGTERM / SIGINT, checkpointing before it stops. Use as a context manager around the loop (it
    installs the signal handlers) and call `should_stop(step)` at the top of each step. Under DDP
    rank 0 decides and every rank follows (dist, device)."""

    def __init__(self, writer, checkpoint: Callable[[int], None], total_steps: int,
                 dist: DistInfo | None = None, device: torch.device | None = None):
        self.writer, self.checkpoint, self.total_steps = writer, checkpoint, total_steps
        self.dist, self.device = dist, device
        self._signals = _Signals()

    def __enter__(self) -> StepBoundary:
        self._signals.__enter__()
        return self

    def __exit__(self, *exc):
        self._signals.__exit__(*exc)

    def should_stop(self, step: int) -> bool:
        """Handle the commands waiting at this step; True (after a checkpoint) when the run stops."""
        stop = save = False
        deferred: list[int] = []  # under torchrun a save while paused waits for the resume:
        # the other ranks sit in the broadcast below, and a checkpoint needs them all
        save_while_paused = deferred.append if self.dist is not None and self.dist.enabled else self.checkpoint
        for command in self.writer.poll_control():
            stop |= command == "stop"
            save |= command == "save"
            if command == "pause" and not stop:
                stop |= _wait_while_paused(self.writer, self._signals, step, save_while_paused)
                save |= bool(deferred)
        stop |= self._signals.requested is not None
        if self.dist is not None:
            stop, save = _broadcast_flags([int(stop), int(save)], self.dist, self.device)
        if save or stop:
            if stop:
                self.writer.write_status(state="stopping", message=f"stopping at step {step}")
            self.checkpoint(step)
        if stop:
            reason = self._signals.requested or "stop command"
            self.writer.event(f"stopped at step {step} of {self.total_steps} ({reason}); continue with --resume")
        return bool(stop)


def _attention_kernels(model: torch.nn.Module, device: torch.device, dtype: str, writer) -> list[dict] | None:
    """On CUDA, which attention kernel each kind of layer trains with (the sys record), and a
    warning event for every one on SDPA's MATH fallback (float32 T x T probabilities in memory)."""
    if device.type != "cuda" or not hasattr(model, "windows"):
        return None
    from workbench.model import training_attention_kernels
    from workbench.train.common import autocast_dtype

    kernels = training_attention_kernels(model, device, autocast_dtype(device, dtype) or torch.float32)
    for row in kernels:
        window = "full causal" if row["window"] is None else f"window {row['window']}"
        writer.event(f"attention layers {row['layers']} ({window}): {row['kernel']}")
        if row["kernel"] == "MATH":
            writer.event(f"warning: attention layers {row['layers']} run on SDPA's MATH kernel (slow, "
                         f"T x T float32 memory); [model] attention = \"flex\" gives windowed layers a fused kernel")
    return kernels


@torch.no_grad()
def sample_text(model: torch.nn.Module, tokenizer, prompt: str = "", max_tokens: int = 64,
                temperature: float = 0.8, top_k: int = 20, seed: int = 0,
                device: torch.device | str = "cpu", dtype: str = "auto", dist: DistInfo | None = None) -> str:
    """A small local sampler for the progress samples in metrics.jsonl: <|bos|> + prompt, then up
    to max_tokens tokens by top-k sampling from a private generator (the training RNG is left
    untouched, so samples never change the loss curve). Re-feeds the last max_context tokens:
    simple, and fast enough for 64 tokens; the real engine lives in workbench/engine. Under FSDP
    every rank runs it (a forward pass needs them all) and takes rank 0's tokens."""
    device = torch.device(device)
    ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    prompt_length = len(ids)
    generator = torch.Generator(device=device).manual_seed(seed)
    context = getattr(model, "max_context", None) or 1024
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_tokens):
            window = torch.tensor([ids[-context:]], dtype=torch.long, device=device)
            with autocast(device, dtype):
                logits = model(window)
            logits = logits[0, -1].float()
            if temperature <= 0:
                next_id = int(logits.argmax())
            else:
                logits = logits / temperature
                if top_k:
                    cutoff = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < cutoff, -math.inf)
                next_id = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            if dist is not None and dist.sharded:
                next_id = _broadcast_flags([next_id], dist, device)[0]
            if next_id == tokenizer.bos_id:
                break
            ids.append(next_id)
    finally:
        model.train(was_training)
    return tokenizer.decode(ids[prompt_length:])


def train(*, stage: str, config, model: torch.nn.Module, optimizers, tokenizer,
          train_batches: Iterator[tuple[torch.Tensor, torch.Tensor]], grad_accum_steps: int,
          writer, run_dir: str | Path, total_steps: int | None, device: torch.device,
          start_step: int = 0, tokens_seen: int = 0, lr_scale: float = 1.0,
          val_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
          eval_every: int | None = None, save_every: int | None = None, sample_every: int | None = None,
          sample_prompt: str = "", extra_meta_fn: Callable[[], dict[str, Any]] | None = None,
          best_val_bpb: float | None = None, eval_at_start: bool = True,
          dist: DistInfo | None = None, verbose: bool = False, time_budget: float | None = None) -> TrainResult:
    """Train `model` from start_step to total_steps (see the module docstring). time_budget
    (seconds) goes into status.json and the checkpoints; with total_steps None, TimeBudget
    chooses total_steps from it after the first steps."""
    dist = dist or DistInfo()
    train_cfg = config.train
    eval_every = eval_every or train_cfg.eval_every
    save_every = save_every or train_cfg.save_every
    sample_every = train_cfg.sample_every if sample_every is None else sample_every
    writer = writer if dist.is_main else _QuietWriter()
    verbose = verbose and dist.is_main
    run_dir = Path(run_dir)

    # The module that trains: compiled (CUDA by default) and wrapped in DDP under torchrun (under
    # FSDP the caller has sharded `model` in place already). The plain `model` is what checkpoints,
    # evaluations and samples use.
    train_model = model
    if dist.enabled and not dist.sharded:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ddp_module = train_model if dist.enabled else None
    if use_compile(train_cfg.compile, device):
        train_model = torch.compile(train_model)
    model.train()

    flops_per_token = model.flops_per_token() if hasattr(model, "flops_per_token") else None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_flops(device.type, device_name, dtype_name(device, train_cfg.dtype))
    if peak is None and device.type == "cuda":
        writer.event(f"no peak FLOP/s known for {device_name!r}: MFU is not reported")
    kernels = _attention_kernels(model, device, train_cfg.dtype, writer)
    budget = TimeBudget(time_budget, eval_every) if time_budget and total_steps is None else None
    if budget is not None:
        total_steps = BUDGET_OPEN_STEPS
    writer.write_status(state="running", message="", total_steps=None if budget else total_steps,
                        time_budget=time_budget)
    writer.set_first_step(start_step)
    writer.log("sys", step=start_step, device=str(device), device_name=device_name,
               params=model.num_params() if hasattr(model, "num_params") else None,
               flops_per_token=flops_per_token, peak_flops=peak, torch=torch.__version__,
               python=platform.python_version(), threads=torch.get_num_threads(),
               dtype=dtype_name(device, train_cfg.dtype), compile=use_compile(train_cfg.compile, device),
               world_size=dist.world_size, distributed=dist.mode if dist.enabled else None,
               device_memory=device_total_memory(device), attention_kernels=kernels,
               grad_accum_steps=grad_accum_steps,
               total_steps=None if budget else total_steps, start_step=start_step)

    step, last_loss = start_step, None
    last_checkpoint: Path | None = None
    saved_step: int | None = None  # step of the newest checkpoint this process wrote
    started = last_print = time.time()

    def checkpoint(at_step: int) -> None:
        """Every rank calls it: the data position (and, under FSDP, the weights and optimizer
        state) is gathered from all of them; rank 0 writes."""
        nonlocal last_checkpoint, saved_step
        if saved_step == at_step:
            return
        extra = extra_meta_fn() if extra_meta_fn is not None else {}
        gathered = (full_state_dict(model), optimizers.state_tensors()) if dist.sharded else None
        saved_step = at_step
        if not dist.is_main:
            return
        meta = {"step": at_step, "tokens": tokens_seen, "stage": stage,
                "total_steps": None if total_steps == BUDGET_OPEN_STEPS else total_steps,
                "rng_states": capture_rng_states(), "best_val_bpb": best_val_bpb, "lr_scale": lr_scale}
        if time_budget:
            meta["time_budget"] = time_budget
        meta.update(extra)
        last_checkpoint = save_checkpoint(run_dir, at_step, model, config.frozen(), tokenizer, optimizers,
                                          meta=meta, keep_last=train_cfg.keep_last, gathered=gathered)
        writer.event(f"checkpoint {last_checkpoint.name}", path=str(last_checkpoint))

    def evaluate(at_step: int) -> None:
        """Every rank calls it: val_fn evaluates this rank's share and sums over the ranks."""
        nonlocal best_val_bpb
        if val_fn is None:
            return
        try:
            results = val_fn(model)
            if "val_bpb" in results and (best_val_bpb is None or results["val_bpb"] < best_val_bpb):
                best_val_bpb = results["val_bpb"]
                writer.write_status(best_val_bpb=best_val_bpb)
            writer.log("eval", step=at_step, **results)
            if verbose:
                print(f"step {at_step:>6}/{total_steps} | " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()),
                      flush=True)
            if last_checkpoint is not None and saved_step == at_step:
                update_meta(last_checkpoint, best_val_bpb=best_val_bpb, **results)
            sample_due = sample_every and ((at_step // eval_every) % sample_every == 0 or at_step == total_steps)
            if sample_due and (dist.is_main or dist.sharded):
                text = sample_text(model, tokenizer, sample_prompt, seed=at_step, device=device,
                                   dtype=train_cfg.dtype, dist=dist)
                writer.log("sample", step=at_step, prompt=sample_prompt, text=text)
        except Exception as error:  # never let an evaluation kill the training
            if device.type == "cuda":
                torch.cuda.empty_cache()
            writer.event(f"evaluation failed at step {at_step}: {type(error).__name__}: {error}")
        finally:
            model.train()

    with StepBoundary(writer, checkpoint, total_steps, dist, device) as boundary:
        if eval_at_start and start_step == 0:
            evaluate(0)
            if budget is not None:
                budget.evaluated_at_start()
        while step < total_steps:
            # 1. step boundary: control files and signals (rank 0 decides, all ranks follow)
            if boundary.should_stop(step):
                break

            # 2. one optimizer step: gradient accumulation over grad_accum_steps micro-batches
            step_start = time.time()
            multiplier = lr_multiplier(step, total_steps, train_cfg)
            optimizers.set_lr_multiplier(multiplier)
            loss_sum = torch.zeros((), device=device)
            step_tokens = 0
            for micro_step in range(grad_accum_steps):
                inputs, targets = next(train_batches)
                last_micro = micro_step == grad_accum_steps - 1
                if dist.sharded:  # FSDP: reduce-scatter the gradients on the last micro-batch only
                    model.set_requires_gradient_sync(last_micro)
                sync = ddp_module.no_sync() if ddp_module is not None and not last_micro else contextlib.nullcontext()
                with sync:
                    with autocast(device, train_cfg.dtype):
                        loss = train_model(inputs, targets)
                    (loss / grad_accum_steps).backward()
                loss_sum += loss.detach()
                step_tokens += inputs.numel()

            # 3. clip, step
            clip = train_cfg.grad_clip if train_cfg.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
                grad_norm = grad_norm.full_tensor()
            optimizers.step()
            optimizers.zero_grad()
            step += 1

            # 4. log
            mean_loss = loss_sum / grad_accum_steps
            if dist.enabled:
                torch_dist.all_reduce(mean_loss, op=torch_dist.ReduceOp.AVG)
                step_tokens *= dist.world_size
            last_loss = mean_loss.item()  # also waits for the GPU: step_seconds is honest
            synchronize(device)
            step_seconds = time.time() - step_start
            tokens_seen += step_tokens
            tokens_per_second = step_tokens / step_seconds if step_seconds > 0 else None
            mfu = None
            if flops_per_token and peak and tokens_per_second:
                achieved = flops_per_token * tokens_per_second / dist.world_size  # per device
                # The start-up peak can be measured while other jobs hold the cores: no step can beat
                # the hardware, so the best rate seen is a floor for the peak and MFU stays <= 100%.
                peak = max(peak, achieved)
                mfu = 100 * (achieved / peak)  # a ratio <= 1 first: (100 * a) / a can round above 100
            matrix_lr = next((g["lr"] for g in optimizers.groups if g.get("name") == "matrix"),
                             optimizers.groups[0]["lr"])
            writer.log("train", step=step, loss=last_loss, lr=matrix_lr, lr_multiplier=multiplier,
                       grad_norm=float(grad_norm), tokens=tokens_seen, tokens_per_second=tokens_per_second,
                       mfu=mfu, step_seconds=step_seconds, **device_memory(device))
            if budget is not None and total_steps == BUDGET_OPEN_STEPS:
                chosen = budget.steps_if_ready(step)
                if chosen is None:
                    writer.heartbeat(step, tokens=tokens_seen, eta_seconds=budget.left())
                else:
                    total_steps = boundary.total_steps = chosen
                    writer.write_status(total_steps=total_steps)
                    writer.event(f"time budget {time_budget:g}s: {total_steps} steps "
                                 f"(speed measured over steps {budget.timed[len(budget.timed) // 2][0]}-{step})")
                    if dist.enabled:  # every rank trains the steps rank 0 chose
                        total_steps = boundary.total_steps = _broadcast_flags([total_steps], dist, device)[0]
            writer.heartbeat(step, tokens=tokens_seen)
            if verbose and (time.time() - last_print >= 2 or step in (start_step + 1, total_steps)):
                last_print = time.time()
                print(f"step {step:>6}/{total_steps} | loss {last_loss:.4f} | lr {matrix_lr:.2e} | "
                      f"grad norm {float(grad_norm):.3f} | {tokens_per_second or 0:,.0f} tok/s"
                      + (f" | mfu {mfu:.1f}%" if mfu is not None else ""), flush=True)
            if not math.isfinite(last_loss):
                writer.event(f"loss is {last_loss} at step {step}: training diverged")
                raise FloatingPointError(f"loss is {last_loss} at step {step} (try a lower learning rate)")

            # 5. checkpoint first, then evaluate
            if step % save_every == 0 or step == total_steps:
                checkpoint(step)
            if step % eval_every == 0 or step == total_steps:
                evaluate(step)

    return TrainResult(step=step, tokens=tokens_seen, stopped=step < total_steps, best_val_bpb=best_val_bpb,
                       last_checkpoint=last_checkpoint, last_loss=last_loss, seconds=time.time() - started)

