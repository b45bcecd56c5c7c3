"""Per-run TOML configs: typed sections with defaults, validation with file:line errors.

One file describes one run. Each stage reads its own section; unknown keys are errors (with a
"did you mean" for typos), and so are wrong types and out-of-range values. Loading never imports
torch, so the TUI can validate configs as the user types.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from workbench.errors import BadInput
from workbench.files import atomic_write_text

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent

# Upper bounds shared by many keys: far beyond any run this workbench makes, low enough that a
# typo (seq_len = 2**34) is an error line rather than a 64 GB allocation or a run of 10^18 steps.
MAX_STEPS = 1_000_000_000
MAX_SEQ_LEN = 65_536  # tokens of context (nanochat trains at 2,048)
MAX_BATCH_ROWS = 8192  # rows per forward pass
MAX_SEED = 2**32 - 1


@dataclass
class RunSection:
    name: str = "tiny"
    out_dir: str = ""  # empty: runs/<name>
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | mps

    _choices = {"device": ("auto", "cpu", "cuda", "mps")}
    _ranges = {"seed": (0, MAX_SEED)}


@dataclass
class DataSection:
    # .txt, .jsonl, .json, .csv, .parquet files or folders of them; relative paths resolve from the
    # config file's folder first, then from the working directory.
    sources: list[str] = field(default_factory=lambda: ["assets/tiny_corpus.txt"])
    dir: str = ""  # where the parquet shards go; empty: <out_dir>/data
    val_fraction: float = 0.05
    # hash: documents by the hash of their text (many independent documents: web pages, chats);
    # tail: the last val_fraction of each source (one running text: a book, Tiny Shakespeare).
    val_split: str = "hash"
    val_sources: list[str] = field(default_factory=list)  # separate validation files: override both
    text_field: str = "text"  # .jsonl field / .parquet column / .csv column
    csv_header: bool = True  # false: a .csv without a header row, each row's columns joined with ", "
    separator: str = ""  # .txt: documents split on this line; empty: on blank lines
    normalize: str = "none"  # none | nfc | ascii
    dedup: bool = True
    shard_rows: int = 50_000  # documents per parquet shard
    row_group_rows: int = 1024  # rows per parquet row group (the streaming unit)

    _choices = {"normalize": ("none", "nfc", "ascii"), "val_split": ("hash", "tail")}
    _ranges = {"val_fraction": (0.0, 0.5), "shard_rows": (1, 10_000_000), "row_group_rows": (1, 1_000_000)}


@dataclass
class TokenizerSection:
    vocab_size: int = 4096
    path: str = ""  # empty: <out_dir>/tokenizer.json
    min_frequency: int = 2
    max_train_chars: int = 2_000_000_000  # stop feeding the trainer after this many characters

    _ranges = {"vocab_size": (300, 1_000_000), "min_frequency": (1, 1_000_000_000),
               "max_train_chars": (1, 10**13)}


@dataclass
class ModelSection:
    kind: str = "gpt"  # gpt | bigram | mlp (see workbench/model.py's registry)
    depth: int = 4
    width: int = 0  # 0: 64 * depth
    heads: int = 0  # 0: width / 64
    kv_heads: int = 0  # 0: heads / 2 (grouped-query attention), at least 1
    seq_len: int = 256
    window_pattern: str = "SSSL"  # per layer, repeated; S = short window, L = full; last layer always L
    short_window: int = 0  # 0: seq_len / 2
    mlp_ratio: int = 4
    logit_softcap: float = 15.0  # 0 turns soft-capping off
    rope_base: float = 10000.0
    context: int = 8  # kind = "mlp": tokens of context it sees
    dropout: float = 0.0  # residual dropout on the attention and MLP outputs, training only
    attention: str = "auto"  # sliding-window kernel: auto (flex on CUDA, SDPA elsewhere) | sdpa | flex

    _choices = {"kind": ("gpt", "bigram", "mlp"), "attention": ("auto", "sdpa", "flex")}
    _ranges = {
        "depth": (1, 256),
        "width": (0, 32_768),
        "heads": (0, 1024),
        "kv_heads": (0, 1024),
        "seq_len": (8, MAX_SEQ_LEN),
        "short_window": (0, MAX_SEQ_LEN),
        "mlp_ratio": (1, 64),
        "logit_softcap": (0.0, None),
        "rope_base": (1.0, None),
        "context": (1, 1024),
        "dropout": (0.0, 0.9),
    }

    def resolved(self) -> ModelSection:
        """A copy with every derived size filled in (width, heads, kv heads, short window)."""
        width = self.width or 64 * self.depth
        heads = self.heads or max(1, width // 64)
        kv_heads = self.kv_heads or max(1, heads // 2)
        short_window = self.short_window or max(1, self.seq_len // 2)
        return dataclasses.replace(self, width=width, heads=heads, kv_heads=kv_heads, short_window=short_window)


@dataclass
class TrainSection:
    total_batch_tokens: int = 8192  # tokens per optimizer step (gradient accumulation fills it)
    device_batch_size: int = 8  # rows per forward pass
    steps: int = 300
    warmup_steps: int = 0
    warmdown_fraction: float = 0.2  # last fraction of steps decays linearly to final_lr_fraction
    final_lr_fraction: float = 0.0
    matrix_lr: float = 0.02  # Muon, 2-D hidden weights
    embedding_lr: float = 0.2  # AdamW
    unembedding_lr: float = 0.004  # AdamW
    scalar_lr: float = 0.5  # AdamW, residual scalars and other 0-/1-D params
    weight_decay: float = 0.0  # decoupled, on the Muon matrices (workbench/optim.py)
    time_budget: str = ""  # e.g. "10m", "90s", "1h": steps chosen from the measured speed ("" : use steps)
    grad_clip: float = 1.0  # 0 turns clipping off
    eval_every: int = 50
    eval_tokens: int = 32768  # validation tokens per bpb evaluation
    sample_every: int = 2  # a text sample every N evaluations (0: never)
    save_every: int = 100
    keep_last: int = 3  # checkpoints kept (0 keeps all)
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | float32 | bfloat16
    compile: str = "auto"  # auto | on | off
    distributed: str = "ddp"  # under torchrun: ddp (replicated model) | fsdp (FSDP2, sharded model and optimizer)
    dist_timeout: float = 1800.0  # seconds a collective waits for a missing rank before the run fails
    data_streams: int = 0  # streams of row groups the ranks split (0: one per rank); see workbench/train/loader.py

    _choices = {"dtype": ("auto", "float32", "bfloat16"), "compile": ("auto", "on", "off"),
                "distributed": ("ddp", "fsdp")}
    _ranges = {
        "total_batch_tokens": (1, MAX_BATCH_ROWS * MAX_SEQ_LEN),
        "device_batch_size": (1, MAX_BATCH_ROWS),
        "steps": (1, MAX_STEPS),
        "warmup_steps": (0, MAX_STEPS),
        "warmdown_fraction": (0.0, 1.0),
        "final_lr_fraction": (0.0, 1.0),
        "matrix_lr": (0.0, None),
        "embedding_lr": (0.0, None),
        "unembedding_lr": (0.0, None),
        "scalar_lr": (0.0, None),
        "weight_decay": (0.0, None),
        "grad_clip": (0.0, None),
        "eval_every": (1, MAX_STEPS),
        "eval_tokens": (1, 10**10),
        "sample_every": (0, MAX_STEPS),
        "save_every": (1, MAX_STEPS),
        "keep_last": (0, 1_000_000),
        "dist_timeout": (1.0, 7 * 86400.0),
        "data_streams": (0, 65536),
    }


@dataclass
class SftSection:
    init_from: str = ""  # checkpoint folder; empty: the newest checkpoint of this run's pretraining
    datasets: list[str] = field(default_factory=lambda: ["synthetic:arith:1.0"])  # "path:weight"
    steps: int = 200
    device_batch_size: int = 8
    lr_scale: float = 0.5  # multiplies the [train] learning rates
    eval_every: int = 50  # 0: never
    save_every: int = 100
    val_fraction: float = 0.05  # of each file dataset held out (0: train on every conversation)
    turn_prefixes: list[str] = field(default_factory=lambda: ["User:", "Assistant:"])  # "User: hi Assistant: hello"

    _ranges = {"steps": (1, MAX_STEPS), "device_batch_size": (1, MAX_BATCH_ROWS), "lr_scale": (0.0, None),
               "eval_every": (0, MAX_STEPS), "save_every": (1, MAX_STEPS), "val_fraction": (0.0, 0.5)}


@dataclass
class GrpoSection:
    init_from: str = ""  # checkpoint folder; empty: the newest SFT checkpoint of this run
    task: str = "arith"  # arith | gsm8k | arc | tool
    tasks: list[str] = field(default_factory=list)  # a mixture, "name:weight" ("arith:1.0", "gsm8k:0.5"); empty: task
    group_size: int = 8
    prompts_per_step: int = 4
    steps: int = 50
    max_new_tokens: int = 128
    temperature: float = 1.0
    lr_scale: float = 0.1
    normalize_std: bool = True  # advantage divided by the group's reward std
    iterations_per_batch: int = 1  # optimizer steps on each sampled batch (> 1: the ratio clip bites)
    clip_epsilon: float = 0.0  # 0: no ratio clipping
    kl_coef: float = 0.0  # 0: no KL penalty to the frozen reference
    # token: sum over every completion token / their count (DAPO); sequence: each completion's mean,
    # then the mean over completions (GRPO paper); constant: sum / (completions * max_new_tokens) (Dr. GRPO)
    loss_normalization: str = "token"
    held_out: int = 200  # held-out prompts per task, answered greedily at the start and the end
    save_every: int = 25

    _choices = {"task": ("arith", "gsm8k", "arc", "tool"), "loss_normalization": ("token", "sequence", "constant")}
    _ranges = {"group_size": (2, 1024), "prompts_per_step": (1, MAX_BATCH_ROWS), "steps": (1, MAX_STEPS),
               "max_new_tokens": (1, MAX_SEQ_LEN), "temperature": (0.0, None), "lr_scale": (0.0, None),
               "iterations_per_batch": (1, 64), "clip_epsilon": (0.0, None), "kl_coef": (0.0, None),
               "held_out": (1, 100_000), "save_every": (1, MAX_STEPS)}


@dataclass
class EvalSection:
    tasks: list[str] = field(default_factory=lambda: ["bpb"])
    limit: int = 0  # examples per task; 0: all
    data_dir: str = "../shared/data"
    max_new_tokens: int = 256
    core_bundle: str = ""  # CORE bundle folder (core.yaml, eval_meta_data.csv, eval_data/); empty: ARC + HellaSwag

    _ranges = {"limit": (0, MAX_STEPS), "max_new_tokens": (1, MAX_SEQ_LEN)}


@dataclass
class SampleSection:
    """The sampling settings, defined once. The engine's SamplingParams is this section plus a
    request's stop strings; `picochat chat` (options and /settings) and the server's request model
    take their names, types and ranges from here, and every one of them checks a value with
    check_sample_setting, so what one accepts the others accept (tests/test_sampling_schema.py)."""

    temperature: float = 0.8  # 0: greedy (the HTTP API keeps OpenAI's ceiling of 2)
    top_k: int = 50  # 0: off
    top_p: float = 1.0  # 1: off; 0: the most likely token only (nucleus sampling always keeps one)
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already in the answer
    max_tokens: int = 256  # generated tokens, forced calculator output included
    seed: int = -1  # -1: random

    _ranges = {"temperature": (0.0, None), "top_k": (0, 1_000_000), "top_p": (0.0, 1.0),
               "repetition_penalty": (0.0, 10.0), "max_tokens": (1, MAX_SEQ_LEN), "seed": (-1, MAX_SEED)}
    _above = {"repetition_penalty": 0.0}  # strictly: logits are divided by it


SAMPLE_SETTINGS = tuple(f.name for f in dataclasses.fields(SampleSection))


SECTIONS: dict[str, type] = {
    "run": RunSection,
    "data": DataSection,
    "tokenizer": TokenizerSection,
    "model": ModelSection,
    "train": TrainSection,
    "sft": SftSection,
    "grpo": GrpoSection,
    "eval": EvalSection,
    "sample": SampleSection,
}


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    sft: SftSection = field(default_factory=SftSection)
    grpo: GrpoSection = field(default_factory=GrpoSection)
    eval: EvalSection = field(default_factory=EvalSection)
    sample: SampleSection = field(default_factory=SampleSection)
    # Where the config came from: relative paths inside it resolve against this folder first.
    base_dir: Path = field(default_factory=Path.cwd, compare=False, repr=False)

    # ---- derived paths: every stage finds its inputs and outputs here ----

    def resolve_path(self, path: str | Path) -> Path:
        """A path from the config: absolute as is; relative ones resolve against the config's folder
        (the repo root for configs/*.toml), or the working directory when only it has the file."""
        path = Path(path).expanduser()
        if path.is_absolute():
            return path
        beside_config = self.base_dir / path
        if not beside_config.exists() and (Path.cwd() / path).exists():
            return Path.cwd() / path
        return beside_config

    def frozen(self) -> Config:
        """A copy with every path made absolute: the run folder's config.toml, valid from anywhere."""
        copy = dataclasses.replace(self)
        copy.run = dataclasses.replace(self.run, out_dir=str(self.out_dir))
        copy.data = dataclasses.replace(self.data, dir=str(self.data_dir),
                                        sources=[str(self.resolve_path(s)) for s in self.data.sources])
        copy.tokenizer = dataclasses.replace(self.tokenizer, path=str(self.tokenizer_path))
        copy.eval = dataclasses.replace(self.eval, data_dir=str(self.resolve_path(self.eval.data_dir)),
                                        core_bundle=str(self.resolve_path(self.eval.core_bundle))
                                        if self.eval.core_bundle else "")
        return copy

    @property
    def out_dir(self) -> Path:
        return self.resolve_path(self.run.out_dir or f"runs/{self.run.name}")

    @property
    def data_dir(self) -> Path:
        return self.resolve_path(self.data.dir) if self.data.dir else self.out_dir / "data"

    @property
    def tokenizer_path(self) -> Path:
        return self.resolve_path(self.tokenizer.path) if self.tokenizer.path else self.out_dir / "tokenizer.json"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# ---------------------------------------------------------------------------------------------
# loading and validation


def _key_line(text: str, section: str | None, key: str | None) -> int | None:
    """1-based line of `key` inside `[section]` (or of the section header), by scanning the text:
    tomllib does not report positions, and a plain scan is enough for hand-written configs."""
    lines = text.splitlines()
    current = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", stripped)
        if header:
            current = header.group(1)
            if section == current and key is None:
                return number
            continue
        if key is not None and current == section:
            if re.match(rf"^[\"']?{re.escape(key)}[\"']?\s*=", stripped):
                return number
    return None


def _where(path: Path | str, text: str, section: str | None, key: str | None = None) -> str:
    line = _key_line(text, section, key)
    return f"{path}:{line}" if line else f"{path}"


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _brief(value: Any) -> str:
    """A bad value as an error line shows it: repr, cut short (a value can be a 900-deep list)."""
    try:
        text = repr(value)
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(section_cls: type, name: str, default: Any, value: Any) -> tuple[Any, str | None]:
    """Coerce and check one value; returns (value, error message or None)."""
    expected = type(default)
    if expected is bool:
        if not isinstance(value, bool):
            return value, f"must be true or false, got {_brief(value)}"
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return value, f"must be an integer, got {_brief(value)}"
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"must be a number, got {_brief(value)}"
        try:
            number = float(value)
        except OverflowError:  # a 400-digit integer from a JSON config
            number = math.inf
        # NaN passes every range check (all comparisons are false) and inf passes open ones
        if not math.isfinite(number):
            return value, f"must be a finite number, got {_brief(value)}"
        value = number
    elif expected is str:
        if not isinstance(value, str):
            return value, f"must be a string, got {_brief(value)}"
    elif expected is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            return value, f"must be a list of strings, got {_brief(value)}"
    choices = getattr(section_cls, "_choices", {}).get(name)
    if choices and value not in choices:
        return value, f"must be one of {', '.join(choices)}, got {_brief(value)}"
    bounds = getattr(section_cls, "_ranges", {}).get(name)
    if bounds:
        low, high = bounds
        if low is not None and value < low:
            return value, f"must be >= {low}, got {_brief(value)}"
        if high is not None and value > high:
            return value, f"must be <= {high}, got {_brief(value)}"
    above = getattr(section_cls, "_above", {}).get(name)
    if above is not None and not value > above:
        return value, f"must be > {above}, got {_brief(value)}"
    return value, None


def check_sample_setting(name: str, value: Any) -> tuple[Any, str | None]:
    """One sampling setting (a name in SAMPLE_SETTINGS) checked exactly as [sample] checks it:
    (the value, an int made float where a float belongs; the problem or None)."""
    return _check_value(SampleSection, name, getattr(SampleSection, name), value)


def sample_setting_bounds(name: str) -> tuple[float | None, float | None, bool]:
    """(lowest, highest, whether the lowest itself is refused) of one sampling setting."""
    low, high = SampleSection._ranges[name]
    return low, high, name in SampleSection._above


def validate(data: dict[str, Any], path: Path | str = "<config>", text: str = "",
             cross_checks: bool = True) -> tuple[Config, list[str]]:
    """Build a Config from parsed TOML; returns (config, errors). Errors read
    "FILE:LINE: [section] key: problem" so both the CLI and the TUI editor can show them.
    cross_checks=False checks keys, types and ranges only (one `picochat sweep --set` value, whose
    combination with the rest of the config is checked per point)."""
    config = Config()
    errors: list[str] = []
    for section_name, values in data.items():
        if section_name not in SECTIONS:
            errors.append(f"{_where(path, text, section_name)}: unknown section [{section_name}]"
                          f"{_suggest(section_name, list(SECTIONS))}")
            continue
        if not isinstance(values, dict):
            errors.append(f"{_where(path, text, None)}: '{section_name}' must be a [section] table")
            continue
        section_cls = SECTIONS[section_name]
        defaults = section_cls()
        known = [f.name for f in dataclasses.fields(section_cls)]
        checked: dict[str, Any] = {}
        for key, value in values.items():
            where = _where(path, text, section_name, key)
            if key not in known:
                errors.append(f"{where}: [{section_name}] unknown key '{key}'{_suggest(key, known)}")
                continue
            value, problem = _check_value(section_cls, key, getattr(defaults, key), value)
            if problem:
                errors.append(f"{where}: [{section_name}] {key}: {problem}")
            else:
                checked[key] = value
        setattr(config, section_name, dataclasses.replace(defaults, **checked))
    if not errors and cross_checks:
        errors.extend(_cross_checks(config, path, text))
    return config, errors


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """"90s", "10m", "1.5h" (a bare number is seconds) -> seconds > 0; ValueError otherwise."""
    text = text.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], None)
    number = text[:-1] if unit else text
    seconds = float(number) * (unit or 1)  # ValueError for garbage
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"not a positive duration: {text!r}")
    return seconds


def _cross_checks(config: Config, path: Path | str, text: str) -> list[str]:
    """Checks that involve more than one key."""
    errors = []
    if config.train.time_budget:
        try:
            parse_duration(config.train.time_budget)
        except ValueError:
            errors.append(f"{_where(path, text, 'train', 'time_budget')}: [train] time_budget: use a duration "
                          f"like \"90s\", \"10m\" or \"1h\", got {config.train.time_budget!r}")
    model = config.model.resolved()
    if model.kind == "gpt":
        if model.width % model.heads:
            errors.append(f"{_where(path, text, 'model', 'heads')}: [model] heads: width {model.width} "
                          f"is not divisible by {model.heads} heads")
        elif (model.width // model.heads) % 2:
            errors.append(f"{_where(path, text, 'model', 'heads')}: [model] heads: head size "
                          f"{model.width // model.heads} must be even for rotary embeddings")
        if model.heads % model.kv_heads:
            errors.append(f"{_where(path, text, 'model', 'kv_heads')}: [model] kv_heads: {model.heads} heads "
                          f"are not divisible by {model.kv_heads} kv heads")
        if not model.window_pattern or set(model.window_pattern.upper()) - {"S", "L"}:
            errors.append(f"{_where(path, text, 'model', 'window_pattern')}: [model] window_pattern: "
                          f"use only the letters S and L, got {model.window_pattern!r}")
    for spec in config.grpo.tasks:
        name, _, weight = spec.partition(":")
        try:
            good_weight = not weight or (math.isfinite(float(weight)) and float(weight) > 0)
        except ValueError:
            good_weight = False
        if name not in GrpoSection._choices["task"] or not good_weight:
            errors.append(f"{_where(path, text, 'grpo', 'tasks')}: [grpo] tasks: use \"NAME:WEIGHT\" with NAME one "
                          f"of {', '.join(GrpoSection._choices['task'])} and WEIGHT > 0, got {_brief(spec)}")
    prefixes = config.sft.turn_prefixes
    if len(prefixes) != 2 or not all(p.strip() for p in prefixes) or prefixes[0] == prefixes[1]:
        errors.append(f"{_where(path, text, 'sft', 'turn_prefixes')}: [sft] turn_prefixes: give two different "
                      f"non-blank prefixes, the user's and the assistant's, got {_brief(prefixes)}")
    train = config.train
    rows_per_step = train.total_batch_tokens / (train.device_batch_size * model.seq_len)
    if rows_per_step < 1 or rows_per_step != int(rows_per_step):
        errors.append(f"{_where(path, text, 'train', 'total_batch_tokens')}: [train] total_batch_tokens: "
                      f"{train.total_batch_tokens} must be a multiple of device_batch_size * seq_len "
                      f"= {train.device_batch_size * model.seq_len}")
    return errors


def parse(text: str, path: Path | str = "<config>") -> tuple[Config, list[str]]:
    """Parse TOML text; returns (config, errors) and never raises for bad input."""
    try:
        data = tomllib.loads(text)
    except RecursionError:  # tomllib recurses once per nested array or inline table
        return Config(), [f"{path}: nested too deeply"]
    except tomllib.TOMLDecodeError as error:
        # tomllib's message ends in "(at line L, column C)": lift the line to the front.
        message = str(error)
        found = re.search(r"\(at line (\d+), column \d+\)", message)
        location = f"{path}:{found.group(1)}" if found else str(path)
        return Config(), [f"{location}: malformed TOML: {message}"]
    return validate(data, path, text)


def load(path: str | Path) -> Config:
    """Load and validate a config file; raises BadInput with every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: cannot read config: {error}") from None
    config, errors = parse(text, path)
    if errors:
        raise BadInput("; ".join(errors) if len(errors) > 1 else errors[0])
    config.base_dir = path.resolve().parent
    # Configs in configs/ name repo-relative paths (assets/...): let them resolve from the repo too.
    if config.base_dir.name == "configs":
        config.base_dir = config.base_dir.parent
    return config


def from_dict(data: dict[str, Any]) -> Config:
    """A Config from a plain dict (a checkpoint's config.json, say); raises BadInput on problems."""
    config, errors = validate(data)
    if errors:
        raise BadInput("; ".join(errors))
    return config


def save(config: Config, path: str | Path) -> None:
    """Write the fully resolved config as TOML (atomically: a crash never leaves half a file)."""
    atomic_write_text(path, config.to_toml())


def default_config_path() -> Path:
    """The embedded default: configs/tiny.toml in a checkout."""
    return REPO_DIR / "configs" / "tiny.toml"
