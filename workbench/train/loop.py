"""The training loop: one visible loop for every training stage (pretraining, SFT, GRPO).

`train(state, steps)` runs optimizer steps until state.total_steps. Each iteration:

    1. step boundary: apply control files (stop / pause / resume / save) and SIGTERM / SIGINT
    2. set the scheduled learning rate, then the stage's step function: pretraining and SFT
       accumulate gradients over micro-batches (MicroBatchStep: bf16 autocast on GPU, DDP gradient
       sync only on the last micro-batch); GRPO samples, scores and takes one or more policy
       steps. Both end in `clip_and_step`, the one place gradients are clipped and applied
    3. log a "train" record (and the stage's own record, e.g. "grpo"), the status.json heartbeat
       and, verbose, a progress line; a loss that is not finite ends the run
    4. checkpoint every save_every steps and at the end, THEN evaluate every eval_every steps
       (saving first: an evaluation that crashes or runs out of memory must never cost the
       training since the last checkpoint; an eval failure is logged as an event, never fatal)

How a stage uses it (pretrain.py is the reference; runner.py does the run-folder part):
- build the model and `optim.build_optimizer(model, cfg.train, lr_scale)` and a TrainState; when
  resuming, `runner.restore(state, checkpoint)` puts back the optimizer tensors, step, tokens, best
  val bpb and RNG states, and the stage its own data position from the checkpoint's meta.
- Steps(step_fn, ...): step_fn(state) -> StepOutcome does one optimizer step (the loop counts it).
  Pretraining and SFT pass MicroBatchStep(state, batches, grad_accum_steps), where batches is an
  endless iterator of (inputs, targets) LongTensors [B, T] on the device (it takes exactly
  grad_accum_steps batches per step and never reads ahead, so the data position saved with a
  checkpoint is exact). Pretraining passes the packing loader; SFT its padded chat batches whose
  targets are -1 wherever the loss must not train (the model's cross-entropy ignores -1).
- val_fn(model) -> {"val_bpb": ...} (any floats; "val_bpb" feeds best_val_bpb). Pretraining
  measures bits per byte on the val split, SFT its held-out loss and bpb, GRPO its held-out
  accuracy with the paired gain against the start.
- extra_meta_fn() -> dict merged into every checkpoint's meta.json: the data position
  ({"loader_state": loader.state_dict()}), SFT's sampler state, GRPO's held-out start, so --resume
  continues exactly.
The caller owns the RunWriter (state.writer): it finishes the run ("done" / "stopped") after
`train` returns, and the runner's `with` finishes it "failed" when train raises.
"""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    """What the loop does between two steps: obey the run folder's control files (stop, save,
    pause until resume) and SIGTERM / SIGINT, checkpointing before it stops. Use as a context manager around the loop (it
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


@dataclass
class TrainState:
    """What a training run carries from step to step. The stage fills it in (a resume sets step,
    tokens and best_val_bpb from the checkpoint, runner.restore); the loop advances it."""

    stage: str  # "pretrain", "sft", "grpo": meta.json's stage, and the kind of the stage's own record
    config: Any  # the run's Config; config.frozen() goes into every checkpoint
    model: torch.nn.Module  # the plain module: checkpoints, evaluations and samples use it
    optimizers: Any
    tokenizer: Any
    run_dir: Path
    device: torch.device
    writer: Any = None  # RunWriter on rank 0, runner.QuietWriter on the other ranks
    dist: DistInfo = field(default_factory=DistInfo)
    step: int = 0  # optimizer steps done (including those before a resume)
    tokens: int = 0  # training tokens seen
    total_steps: int | None = None  # None: TimeBudget picks it from time_budget after the first steps
    best_val_bpb: float | None = None
    lr_scale: float = 1.0  # recorded in meta.json: a resumed run builds the same optimizer
    time_budget: float | None = None  # seconds; recorded in status.json and meta.json
    verbose: bool = False


@dataclass
class StepOutcome:
    """What a step function reports about the optimizer step it took."""

    loss: torch.Tensor | float  # the step's mean loss over every rank (a tensor is read after the step)
    tokens: int  # tokens trained on, all ranks together
    grad_norm: torch.Tensor | float  # before clipping
    stats: dict[str, Any] = field(default_factory=dict)  # the stage's own record (kind = stage), with the train fields
    sample: tuple[str, str] | None = None  # (prompt, text): logged as a "sample" record
    summary: str = ""  # the stage's part of the verbose progress line


@dataclass
class Steps:
    """How a stage trains: its step function, and the evaluation, checkpoint meta and cadence
    around it (None: the [train] setting)."""

    step_fn: Callable[[TrainState], StepOutcome]
    val_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None
    extra_meta_fn: Callable[[], dict[str, Any]] | None = None
    eval_every: int | None = None
    save_every: int | None = None
    sample_every: int | None = None  # evaluations between progress samples; 0: none
    sample_prompt: str = ""
    eval_at_start: bool = True  # evaluate at step 0 (a fresh run only): the curve's starting point
    schedule: Any = None  # the section lr_multiplier reads (warmup, warmdown); None: config.train
    sys_fields: dict[str, Any] = field(default_factory=dict)  # added to the "sys" record


def clip_and_step(model: torch.nn.Module, optimizers, grad_clip: float) -> torch.Tensor:
    """Clip the gradients' global norm to grad_clip (0: measure it, never clip), step every
    optimizer and zero the gradients. Returns the norm before clipping (whole, under FSDP)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizers.step()
    optimizers.zero_grad()
    return grad_norm


class MicroBatchStep:
    """Pretraining's and SFT's step function: grad_accum_steps micro-batches of forward + backward
    (the loss divided among them), then clip_and_step. The module that trains is compiled (CUDA by
    default) and wrapped in DDP under torchrun; under FSDP the caller has sharded the model in
    place already. Build it on every rank: DDP's construction is a collective."""

    def __init__(self, state: TrainState, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                 grad_accum_steps: int):
        self.batches, self.grad_accum_steps = batches, grad_accum_steps
        model, dist, device = state.model, state.dist, state.device
        self.train_model = model
        if dist.enabled and not dist.sharded:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                       else None)
        self.ddp_module = self.train_model if dist.enabled else None
        self.compiled = use_compile(state.config.train.compile, device)
        if self.compiled:
            self.train_model = torch.compile(self.train_model)

    def sys_fields(self) -> dict[str, Any]:
        return {"grad_accum_steps": self.grad_accum_steps, "compile": self.compiled}

    def __call__(self, state: TrainState) -> StepOutcome:
        train_cfg, device, dist = state.config.train, state.device, state.dist
        loss_sum = torch.zeros((), device=device)
        step_tokens = 0
        for micro_step in range(self.grad_accum_steps):
            inputs, targets = next(self.batches)
            last_micro = micro_step == self.grad_accum_steps - 1
            if dist.sharded:  # FSDP: reduce-scatter the gradients on the last micro-batch only
                state.model.set_requires_gradient_sync(last_micro)
            sync = (self.ddp_module.no_sync() if self.ddp_module is not None and not last_micro
                    else contextlib.nullcontext())
            with sync:
                with autocast(device, train_cfg.dtype):
                    loss = self.train_model(inputs, targets)
                (loss / self.grad_accum_steps).backward()
            loss_sum += loss.detach()
            step_tokens += inputs.numel()
        grad_norm = clip_and_step(state.model, state.optimizers, train_cfg.grad_clip)
        mean_loss = loss_sum / self.grad_accum_steps
        if dist.enabled:
            torch_dist.all_reduce(mean_loss, op=torch_dist.ReduceOp.AVG)
            step_tokens *= dist.world_size
        return StepOutcome(loss=mean_loss, tokens=step_tokens, grad_norm=grad_norm)


def train(state: TrainState, steps: Steps) -> TrainResult:
    """Train state.model from state.step to state.total_steps (see the module docstring). With
    total_steps None, TimeBudget chooses it from state.time_budget after the first steps."""
    dist, device, writer, model, optimizers = state.dist, state.device, state.writer, state.model, state.optimizers
    train_cfg = state.config.train
    schedule = steps.schedule or train_cfg
    eval_every = steps.eval_every or train_cfg.eval_every
    save_every = steps.save_every or train_cfg.save_every
    sample_every = train_cfg.sample_every if steps.sample_every is None else steps.sample_every
    verbose = state.verbose and dist.is_main
    run_dir = Path(state.run_dir)
    start_step = state.step
    model.train()

    flops_per_token = model.flops_per_token() if hasattr(model, "flops_per_token") else None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_flops(device.type, device_name, dtype_name(device, train_cfg.dtype))
    if peak is None and device.type == "cuda":
        writer.event(f"no peak FLOP/s known for {device_name!r}: MFU is not reported")
    kernels = _attention_kernels(model, device, train_cfg.dtype, writer)
    budget = TimeBudget(state.time_budget, eval_every) if state.time_budget and state.total_steps is None else None
    if budget is not None:
        state.total_steps = BUDGET_OPEN_STEPS
    writer.write_status(state="running", message="", total_steps=None if budget else state.total_steps,
                        time_budget=state.time_budget)
    writer.set_first_step(start_step)
    writer.log("sys", step=start_step, device=str(device), device_name=device_name,
               params=model.num_params() if hasattr(model, "num_params") else None,
               flops_per_token=flops_per_token, peak_flops=peak, torch=torch.__version__,
               python=platform.python_version(), threads=torch.get_num_threads(),
               dtype=dtype_name(device, train_cfg.dtype),
               world_size=dist.world_size, distributed=dist.mode if dist.enabled else None,
               device_memory=device_total_memory(device), attention_kernels=kernels,
               total_steps=None if budget else state.total_steps, start_step=start_step, **steps.sys_fields)

    last_loss = None
    last_checkpoint: Path | None = None
    saved_step: int | None = None  # step of the newest checkpoint this process wrote
    started = last_print = time.time()

    def checkpoint(at_step: int) -> None:
        """Every rank calls it: the data position (and, under FSDP, the weights and optimizer
        state) is gathered from all of them; rank 0 writes."""
        nonlocal last_checkpoint, saved_step
        if saved_step == at_step:
            return
        extra = steps.extra_meta_fn() if steps.extra_meta_fn is not None else {}
        gathered = (full_state_dict(model), optimizers.state_tensors()) if dist.sharded else None
        saved_step = at_step
        if not dist.is_main:
            return
        meta = {"step": at_step, "tokens": state.tokens, "stage": state.stage,
                "total_steps": None if state.total_steps == BUDGET_OPEN_STEPS else state.total_steps,
                "rng_states": capture_rng_states(), "best_val_bpb": state.best_val_bpb, "lr_scale": state.lr_scale}
        if state.time_budget:
            meta["time_budget"] = state.time_budget
        meta.update(extra)
        last_checkpoint = save_checkpoint(run_dir, at_step, model, state.config.frozen(), state.tokenizer,
                                          optimizers, meta=meta, keep_last=train_cfg.keep_last, gathered=gathered)
        writer.event(f"checkpoint {last_checkpoint.name}", path=str(last_checkpoint))

    def evaluate(at_step: int) -> None:
        """Every rank calls it: val_fn evaluates this rank's share and sums over the ranks."""
        if steps.val_fn is None:
            return
        try:
            results = steps.val_fn(model)
            if "val_bpb" in results and (state.best_val_bpb is None or results["val_bpb"] < state.best_val_bpb):
                state.best_val_bpb = results["val_bpb"]
                writer.write_status(best_val_bpb=state.best_val_bpb)
            writer.log("eval", step=at_step, **results)
            if verbose:
                print(f"step {at_step:>6}/{state.total_steps} | "
                      + " | ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}"  # counts stay counts
                                   for k, v in results.items()), flush=True)
            if last_checkpoint is not None and saved_step == at_step:
                update_meta(last_checkpoint, best_val_bpb=state.best_val_bpb, **results)
            sample_due = sample_every and ((at_step // eval_every) % sample_every == 0 or at_step == state.total_steps)
            if sample_due and (dist.is_main or dist.sharded):
                text = sample_text(model, state.tokenizer, steps.sample_prompt, seed=at_step, device=device,
                                   dtype=train_cfg.dtype, dist=dist)
                writer.log("sample", step=at_step, prompt=steps.sample_prompt, text=text)
        except Exception as error:  # never let an evaluation kill the training
            if device.type == "cuda":
                torch.cuda.empty_cache()
            writer.event(f"evaluation failed at step {at_step}: {type(error).__name__}: {error}")
        finally:
            model.train()

    with StepBoundary(writer, checkpoint, state.total_steps, dist, device) as boundary:
        if steps.eval_at_start and start_step == 0:
            evaluate(0)
            if budget is not None:
                budget.evaluated_at_start()
        while state.step < state.total_steps:
            # 1. step boundary: control files and signals (rank 0 decides, all ranks follow)
            if boundary.should_stop(state.step):
                break

            # 2. one optimizer step at the scheduled learning rate: the stage's step function
            step_start = time.time()
            multiplier = lr_multiplier(state.step, state.total_steps, schedule)
            optimizers.set_lr_multiplier(multiplier)
            outcome = steps.step_fn(state)
            state.step += 1
            step = state.step

            # 3. log
            last_loss = float(outcome.loss)  # also waits for the GPU: step_seconds is honest
            synchronize(device)
            step_seconds = time.time() - step_start
            state.tokens += outcome.tokens
            tokens_per_second = outcome.tokens / step_seconds if step_seconds > 0 else None
            mfu = None
            if flops_per_token and peak and tokens_per_second:
                achieved = flops_per_token * tokens_per_second / dist.world_size  # per device
                # The start-up peak can be measured while other jobs hold the cores: no step can beat
                # the hardware, so the best rate seen is a floor for the peak and MFU stays <= 100%.
                peak = max(peak, achieved)
                mfu = 100 * (achieved / peak)  # a ratio <= 1 first: (100 * a) / a can round above 100
            matrix_lr = next((g["lr"] for g in optimizers.groups if g.get("name") == "matrix"),
                             optimizers.groups[0]["lr"])
            grad_norm = float(outcome.grad_norm)
            train_fields = {"loss": last_loss, "lr": matrix_lr, "lr_multiplier": multiplier, "grad_norm": grad_norm,
                            "tokens": state.tokens, "tokens_per_second": tokens_per_second,
                            "step_seconds": step_seconds}
            writer.log("train", step=step, **train_fields, mfu=mfu, **device_memory(device))
            if outcome.stats:
                writer.log(state.stage, step=step, **outcome.stats, **train_fields)
            if outcome.sample is not None:
                writer.log("sample", step=step, prompt=outcome.sample[0], text=outcome.sample[1])
            if budget is not None and state.total_steps == BUDGET_OPEN_STEPS:
                chosen = budget.steps_if_ready(step)
                if chosen is None:
                    writer.heartbeat(step, tokens=state.tokens, eta_seconds=budget.left())
                else:
                    state.total_steps = boundary.total_steps = chosen
                    writer.write_status(total_steps=state.total_steps)
                    writer.event(f"time budget {state.time_budget:g}s: {state.total_steps} steps "
                                 f"(speed measured over steps {budget.timed[len(budget.timed) // 2][0]}-{step})")
                    if dist.enabled:  # every rank trains the steps rank 0 chose
                        state.total_steps = boundary.total_steps = _broadcast_flags([state.total_steps], dist,
                                                                                    device)[0]
            writer.heartbeat(step, tokens=state.tokens)
            if verbose and (time.time() - last_print >= 2 or step in (start_step + 1, state.total_steps)):
                last_print = time.time()
                print(f"{state.stage} step {step:>6}/{state.total_steps} | loss {last_loss:.4f} | lr {matrix_lr:.2e} | "
                      f"grad norm {grad_norm:.3f} | {tokens_per_second or 0:,.0f} tok/s"
                      + (f" | mfu {mfu:.1f}%" if mfu is not None else "")
                      + (f" | {outcome.summary}" if outcome.summary else ""), flush=True)
            if not math.isfinite(last_loss):
                writer.event(f"loss is {last_loss} at step {step}: training diverged")
                raise FloatingPointError(f"loss is {last_loss} at step {step} (try a lower learning rate)")

            # 4. checkpoint first, then evaluate
            if step % save_every == 0 or step == state.total_steps:
                checkpoint(step)
            if step % eval_every == 0 or step == state.total_steps:
                evaluate(step)

    return TrainResult(step=state.step, tokens=state.tokens, stopped=state.step < state.total_steps,
                       best_val_bpb=state.best_val_bpb, last_checkpoint=last_checkpoint, last_loss=last_loss,
                       seconds=time.time() - started)
