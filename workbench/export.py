"""Take a model out of picochat: a checkpoint -> a folder other tools load.

    export_checkpoint(CHECKPOINT, DIR, "hf")           Hugging Face transformers, trust_remote_code:
        config.json              model_type "picochat", auto_map, every [model] field (resolved)
        configuration_picochat.py, modeling_picochat.py   the architecture (workbench/export_template/)
        model.safetensors        float32 weights under the modeling file's names
        generation_config.json   bos, and eos = <|assistant_end|> (plus the tokens the engine stops at)
        tokenizer.json           picochat's BPE, with <|bos|> prepended to plain-text encodings
        tokenizer_config.json    special tokens and a Jinja chat_template rendering what
                                 Tokenizer.render_for_completion / render_conversation render
        README.md                model card: architecture, training, val bpb and eval scores read
                                 from the checkpoint's records, how to load it
    export_checkpoint(CHECKPOINT, DIR, "safetensors")  model.safetensors (the same names),
                                 config.json (no auto_map) and picochat's tokenizer.json only, for
                                 tools that bring their own code

INT8 checkpoints are exported dequantized (weight * scale per output channel, in float32): the
files stay the usual float ones every tool reads, and the card says so. Only the GPT exports
(the bigram and MLP baselines have no counterpart worth loading elsewhere).

The folder is written beside DIR under a temporary name and renamed when complete. This module
needs safetensors and json only: transformers is never imported here.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from workbench.errors import BadInput
from workbench.files import replace_folder
from workbench.tokenizer import ASSISTANT_END, ASSISTANT_START, BOS, USER_START

FORMATS = ("hf", "safetensors")
TEMPLATE_DIR = Path(__file__).resolve().parent / "export_template"
REMOTE_CODE_FILES = ("configuration_picochat.py", "modeling_picochat.py")
AUTO_MAP = {
    "AutoConfig": "configuration_picochat.PicochatConfig",
    "AutoModel": "modeling_picochat.PicochatModel",
    "AutoModelForCausalLM": "modeling_picochat.PicochatForCausalLM",
}
# The engine ends a reply at any of these (workbench/engine/engine.py): the first is the eos.
STOP_TOKENS = (ASSISTANT_END, BOS, USER_START, ASSISTANT_START)


def hf_name(name: str) -> str:
    """picochat's parameter name -> the modeling file's (the body lives under `model.`)."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def float_state_dict(model) -> dict[str, Any]:
    """The model's weights as float32 tensors under picochat's names; an INT8 model's linears
    are dequantized (int8 weight * per-channel scale)."""
    import torch

    from workbench.int8 import Int8Linear

    tensors = {name: tensor for name, tensor in model.state_dict().items() if not name.endswith(".weight_scale")}
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            tensors[f"{name}.weight"] = module.dequantized(torch.float32)
    return {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in tensors.items()}


def hf_config(checkpoint, with_remote_code: bool) -> dict[str, Any]:
    tokenizer = checkpoint.tokenizer
    config = {"architectures": ["PicochatForCausalLM"], "model_type": "picochat"}
    if with_remote_code:
        config["auto_map"] = AUTO_MAP
    config["vocab_size"] = tokenizer.vocab_size
    config.update(dataclasses.asdict(checkpoint.model.config))  # resolved: every derived size filled in
    config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.special_id(ASSISTANT_END),
                  pad_token_id=tokenizer.special_id(ASSISTANT_END), tie_word_embeddings=False,
                  use_cache=True, torch_dtype="float32")
    return config


def generation_config(checkpoint) -> dict[str, Any]:
    """No max_length: the tokenizer's model_max_length says the context, and a default length
    here would only clash with the max_new_tokens a caller passes."""
    tokenizer = checkpoint.tokenizer
    return {"bos_token_id": tokenizer.bos_id,
            "eos_token_id": [tokenizer.special_id(token) for token in STOP_TOKENS],
            "pad_token_id": tokenizer.special_id(ASSISTANT_END)}


def hf_tokenizer_json(tokenizer) -> str:
    """picochat's tokenizer.json with a post-processor that puts <|bos|> in front of a plain-text
    encoding, as picochat's training rows have it (apply_chat_template adds no special tokens:
    its template writes <|bos|> itself)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    hf = HFTokenizer.from_str(tokenizer.to_str())
    hf.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, tokenizer.bos_id)])
    return hf.to_str()


def tokenizer_config(checkpoint) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": ASSISTANT_END,
        "pad_token": ASSISTANT_END,
        "model_max_length": checkpoint.model.config.seq_len,
        "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids: generate(**inputs) refuses them
        "clean_up_tokenization_spaces": False,
        "chat_template": (TEMPLATE_DIR / "chat_template.jinja").read_text(encoding="utf-8"),
    }


# ---------------------------------------------------------------------------------------------
# the model card


def _run_dir(checkpoint_path: Path) -> Path | None:
    return checkpoint_path.parent.parent if checkpoint_path.parent.name in ("checkpoints", "int8") else None


def validation_bpb(checkpoint) -> tuple[float | None, str]:
    """The checkpoint's held-out bpb and where it was read: meta.json's val_bpb, else the run's
    metrics.jsonl eval record at the checkpoint's step."""
    from workbench import runs

    value = checkpoint.meta.get("val_bpb")
    if runs.is_number(value):
        return float(value), "meta.json"
    run_dir = _run_dir(checkpoint.path)
    if run_dir is not None:
        for record in reversed(runs.read_metrics(run_dir, "eval")):
            if record.get("step") == checkpoint.step and runs.is_number(record.get("val_bpb")):
                return float(record["val_bpb"]), f"{run_dir.name}/metrics.jsonl"
    return None, ""


def eval_scores(checkpoint_path: Path) -> list[tuple[str, str, Any]]:
    """(task, headline score, examples) for every task in <checkpoint>/evals.json; garbage in the
    file is skipped, never fatal."""
    from workbench import checkpoint_files, runs
    from workbench.evals.api import headline

    results = checkpoint_files.read_evals(checkpoint_path)
    rows = []
    for task, result in sorted(results.items()):
        if not isinstance(result, dict):
            continue
        try:
            score = headline(task, result)
        except (TypeError, ValueError):  # a score that is not a number
            continue
        if score != "-":
            rows.append((task, score, result.get("n") if runs.is_number(result.get("n")) else "?"))
    return rows


def _training_data(checkpoint) -> str:
    config, stage = checkpoint.config, str(checkpoint.meta.get("stage", "pretrain"))
    if stage == "sft":
        return "chat data " + ", ".join(f"`{Path(item).name}`" for item in config.sft.datasets)
    if stage == "grpo":
        return f"reinforcement learning (GRPO) on the `{config.grpo.task}` task"
    return "text " + ", ".join(f"`{Path(source).name}`" for source in config.data.sources)


def model_card(checkpoint, out_name: str) -> str:
    model = checkpoint.model.config
    meta = checkpoint.meta
    int8 = meta.get("quantization") == "int8"
    params = sum(tensor.numel() for tensor in float_state_dict(checkpoint.model).values())
    windows = ", ".join("full" if window is None else str(window) for window in checkpoint.model.windows)
    bpb, bpb_source = validation_bpb(checkpoint)
    tokens = meta.get("tokens")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [picochat]",
        "---",
        "",
        f"# {checkpoint.config.run.name} (picochat, step {checkpoint.step})",
        "",
        f"A {params / 1e6:.2f}M-parameter GPT trained with picochat, exported by `picochat export` "
        f"from `{checkpoint.path.parent.name}/{checkpoint.path.name}`.",
        "",
        "## Architecture",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| parameters | {params:,} |",
        f"| layers | {model.depth} |",
        f"| width | {model.width} |",
        f"| heads / kv heads (GQA) | {model.heads} / {model.kv_heads} (head dim {model.width // model.heads}) |",
        f"| context | {model.seq_len} tokens |",
        f"| attention windows per layer | {windows} (pattern `{model.window_pattern}`) |",
        f"| MLP | ReLU², {model.mlp_ratio}x width |",
        f"| vocabulary | {checkpoint.tokenizer.vocab_size} (byte-level BPE) |",
        f"| logit soft-cap | {model.logit_softcap} |",
        f"| rotary base | {model.rope_base} |",
        "",
        "Rotary embeddings, QK norm, RMSNorm without weights, residual scalars (`resid_lambdas`, "
        "`x0_lambdas`), an untied head with soft-capped logits.",
        "",
        "## Training",
        "",
        f"- stage: {meta.get('stage', 'pretrain')}, step {checkpoint.step}"
        + (f", {tokens:,} tokens" if isinstance(tokens, int) and tokens > 0 else ""),
        f"- data: {_training_data(checkpoint)}",
        "",
        "## Evaluation",
        "",
    ]
    if bpb is not None:
        note = " (measured on the float checkpoint before quantization)" if int8 else ""
        lines.append(f"- held-out validation: **{bpb:.4f} bits per byte** at step {checkpoint.step} "
                     f"(from {bpb_source}){note}")
    else:
        lines.append("- held-out validation bpb: not recorded for this checkpoint")
    scores = eval_scores(checkpoint.path)
    if scores:
        lines += ["", "| task | score | examples |", "| --- | --- | --- |"]
        lines += [f"| {task} | {score} | {examples} |" for task, score, examples in scores]
        lines += ["", "Scores from the checkpoint's evals.json (`picochat eval`)."]
    else:
        lines.append("- no task evals recorded (run `picochat eval CHECKPOINT` before exporting to list them here)")
    if int8:
        lines += ["", "**Weights:** dequantized from an INT8 checkpoint (`picochat quantize`): int8 weight x "
                      "per-channel scale, stored as float32. Logits differ slightly from picochat's INT8 kernel, "
                      "which rounds activations to bf16."]
    lines += [
        "",
        "## Use",
        "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{out_name}", trust_remote_code=True)',
            f'tokenizer = AutoTokenizer.from_pretrained("{out_name}", trust_remote_code=True)',
            'messages = [{"role": "user", "content": "What is 2 + 3?"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,",
            '                                       return_tensors="pt")',
            "out = model.generate(**inputs, max_new_tokens=64)",
            'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
            "```",
            "",
            "The architecture is in `modeling_picochat.py` (hence `trust_remote_code=True`); it needs torch "
            "and transformers only. The tokenizer is transformers' stock fast tokenizer, but AutoTokenizer "
            "reads config.json first and, without the flag, asks before running the remote code. Plain-text encodings start with `<|bos|>` as picochat's training rows do. "
            "The chat template renders picochat's format: a system message is folded into the first user "
            "turn, and assistant content may be a list of parts `{\"type\": \"text\" | \"thinking\" | "
            "\"python\" | \"python_output\", \"text\": ...}` (the calculator tool calls). `generate` stops at "
            "`<|assistant_end|>` and at the other tokens picochat's engine stops at. Text that spells a "
            "special token (`<|bos|>`) is read as that token here, where picochat keeps it plain text.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# writing the folder


def _check_destination(out: Path, source: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BadInput(f"{out}: folder is not empty (use --force to replace it)")
    resolved, source = out.resolve(), source.resolve()
    if resolved == source or resolved in source.parents:
        raise BadInput(f"{out}: holds the checkpoint being exported; choose another --out")


def _write_folder(checkpoint, folder: Path, fmt: str, out_name: str) -> None:
    from workbench.checkpoint import save_tensors
    from workbench.checkpoint_files import write_json

    tensors = {hf_name(name): tensor for name, tensor in float_state_dict(checkpoint.model).items()}
    save_tensors(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    write_json(folder / "config.json", hf_config(checkpoint, with_remote_code=fmt == "hf"))
    if fmt == "hf":
        (folder / "tokenizer.json").write_text(hf_tokenizer_json(checkpoint.tokenizer), encoding="utf-8")
        write_json(folder / "tokenizer_config.json", tokenizer_config(checkpoint))
        write_json(folder / "generation_config.json", generation_config(checkpoint))
        for name in REMOTE_CODE_FILES:
            shutil.copyfile(TEMPLATE_DIR / name, folder / name)
        (folder / "README.md").write_text(model_card(checkpoint, out_name), encoding="utf-8")
    else:
        (folder / "tokenizer.json").write_text(checkpoint.tokenizer.to_str(), encoding="utf-8")


def export_checkpoint(spec: str | Path, out: str | Path, fmt: str = "hf", force: bool = False) -> Path:
    """Write CHECKPOINT (a checkpoint folder, or a run folder: its newest) as a `fmt` folder at
    `out`; returns `out`. An existing non-empty `out` is replaced only with force."""
    from workbench.checkpoint import load_checkpoint
    from workbench.checkpoint_files import resolve_checkpoint

    if fmt not in FORMATS:
        raise BadInput(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    source = resolve_checkpoint(spec)
    _check_destination(out, source, force)
    checkpoint = load_checkpoint(source, device="cpu")
    if checkpoint.model.config.kind != "gpt":
        raise BadInput(f"{source / 'config.json'}: [model] kind {checkpoint.model.config.kind!r} does not "
                       "export; only the gpt model does")

    temporary = out.with_name(f".tmp-{out.name}")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    try:
        _write_folder(checkpoint, temporary, fmt, out.name)
    except BaseException:  # a full disk, ^C: no half-written folder left behind
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    replace_folder(temporary, out)  # an empty folder, or one replaced with --force
    return out
