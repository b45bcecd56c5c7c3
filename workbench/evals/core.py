"""CORE: the DCLM paper's base-model metric (arXiv 2406.11794), computed the way nanochat does.

A bundle of in-context-learning tasks, each scored few-shot by log-likelihood and centered against
its random baseline: centered = (accuracy - baseline) / (1 - baseline), so chance is 0 and a
perfect score 1. CORE is the mean of the centered accuracies.

The bundle's layout (nanochat's eval_bundle, from DCLM / llm-foundry), read from a local folder
(`[eval] core_bundle` or `--core-bundle`; nothing is downloaded):

    core.yaml              icl_tasks: a list of {label, dataset_uri, num_fewshot: [k],
                           icl_task_type, continuation_delimiter (default " ")}
    eval_meta_data.csv     columns "Eval Task" and "Random baseline" (in percent)
    eval_data/<dataset_uri>   one JSONL file per task

Three task types, each a JSONL record form:
- multiple_choice {"query", "choices", "gold"}: prompt = query + delimiter + choice; the choice whose
  tokens (after the prefix all choices share) have the lowest mean loss is the answer.
- schema {"context_options", "continuation", "gold"}: prompt = option + delimiter + continuation;
  the option under which the shared continuation (the common token suffix) has the lowest mean loss.
- language_modeling {"context", "continuation"}: correct when greedy decoding reproduces every
  token of the continuation after context + delimiter.
Few-shot examples precede the prompt, each "shot + delimiter + its answer" and a blank line, drawn
per item with random.Random(1234 + index) from the task's other items; items are shuffled with
random.Random(1337) and `limit` takes the first N of that order (nanochat's subsampling). One
deliberate difference: the few-shot pool is the whole task file, not only the N items evaluated,
so a small --limit still gets its shots (with limit 0 the two are the same).

Without a bundle, `available_tasks(data_dir)` maps the eval data picochat already reads into the
same form: ARC-Easy and ARC-Challenge (llm-foundry files are the bundle's own format) and HellaSwag
(10-shot, and 0-shot as hellaswag_zeroshot) with the bundle's settings, and the figure is labelled
"CORE (available tasks: 4 of 22)": comparable across picochat runs, not with a full-bundle CORE.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import BadInput
from workbench.evals import common
from workbench.evals.common import Progress, TaskResult, iter_csv, iter_jsonl, mean, no_progress, require
from workbench.input_files import open_regular, parse_json
from workbench.tasks import hellaswag

# The 22 tasks of nanochat's core.yaml (DCLM's CORE set).
CORE_LABELS = (
    "hellaswag_zeroshot", "jeopardy", "bigbench_qa_wikidata", "arc_easy", "arc_challenge", "copa",
    "commonsense_qa", "piqa", "openbook_qa", "lambada_openai", "hellaswag", "winograd", "winogrande",
    "bigbench_dyck_languages", "agi_eval_lsat_ar", "bigbench_cs_algorithms", "bigbench_operators",
    "bigbench_repeat_copy_logic", "squad", "coqa", "boolq", "bigbench_language_identification",
)
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
SHUFFLE_SEED = 1337
FEWSHOT_SEED = 1234
MAX_TASK_LIST_BYTES = 1 << 20  # nanochat's 22-task core.yaml is a few kB


@dataclass
class CoreTask:
    label: str
    kind: str  # one of TASK_TYPES
    shots: int
    delimiter: str
    random_baseline: float  # a fraction (the meta-data file gives percent)
    items: list[dict[str, Any]] = field(repr=False)  # validated, in nanochat's shuffled order
    source: str = ""  # the JSONL file


def centered(accuracy: float, random_baseline: float) -> float:
    """Accuracy rescaled so the random baseline is 0 and a perfect score 1."""
    return (accuracy - random_baseline) / (1.0 - random_baseline)


def centered_mean(scores: list[float]) -> float | None:
    """CORE / ChatCORE: the mean of centered scores. A mean that is 0 but for float cancellation
    (centered 0.35 and 0.15 against 0.25 average to -1.4e-17) is 0, not a -0.0000 in every report."""
    score = mean(scores)
    return 0.0 if score is not None and abs(score) < 1e-12 else score


# ---------------------------------------------------------------------------------------------
# reading a bundle


def _yaml_scalar(text: str, where: str) -> Any:
    """One scalar of the YAML subset core.yaml uses: quoted strings, integers, booleans, plain words."""
    text = text.strip()
    if text.startswith('"'):
        try:
            return parse_json(text)  # YAML double-quoted escapes (\n, \t, \", \\) are JSON's
        except ValueError:
            raise BadInput(f"{where}: malformed double-quoted string {text}") from None
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise BadInput(f"{where}: malformed single-quoted string {text}")
        return text[1:-1].replace("''", "'")
    if text.startswith("["):
        if not text.endswith("]"):
            raise BadInput(f"{where}: malformed list {text}")
        inner = text[1:-1].strip()
        if inner.startswith("["):  # outside the subset; read recursively, `[` x 3,000 would overflow the stack
            raise BadInput(f"{where}: a list inside a list ({text[:40]}...)")
        return [_yaml_scalar(part, where) for part in inner.split(",")] if inner else []
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lstrip("-").isdigit():
        return int(text)
    return text


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a '#' inside quotes is kept)."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1] in " \t"):
            return line[:position]
    return line


def _bundle_file(path: Path) -> Path:
    """A file the bundle must have. Missing, the flag to check is the bundle's, not the eval
    readers' default hint (--data-dir, which a bundle does not use)."""
    if not os.path.lexists(path):
        raise BadInput(f"{path}: not found (a CORE bundle has core.yaml, eval_meta_data.csv and eval_data/; "
                       f"is [eval] core_bundle / --core-bundle right?)")
    return path


def read_task_list(path: Path) -> list[tuple[dict[str, Any], dict[str, int]]]:
    """core.yaml's `icl_tasks`: (task mapping, line number of each key; "-" for the item) each. A small reader of the YAML subset
    the bundle uses (a list of flat mappings), so picochat needs no YAML library; anything outside
    it is BadInput naming the line."""
    _bundle_file(path)
    with open_regular(path, "CORE task list") as handle:  # a FIFO would hang the reader: refused
        try:
            data = handle.read(MAX_TASK_LIST_BYTES + 1)
        except OSError as error:
            raise BadInput(f"{path}: cannot read: {error.strerror or error}") from None
    if len(data) > MAX_TASK_LIST_BYTES:
        raise BadInput(f"{path}: over {MAX_TASK_LIST_BYTES >> 20} MiB; a CORE task list is a few kB")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise BadInput(f"{path}: not UTF-8 (byte {error.start})") from None
    tasks: list[tuple[dict[str, Any], dict[str, int]]] = []
    in_tasks = False
    for number, raw in enumerate(lines, start=1):
        line = _strip_comment(raw).rstrip()
        where = f"{path}:{number}"
        if not line.strip():
            continue
        if not line[0].isspace() and not line.startswith("-"):  # a top-level key
            key, _, _ = line.partition(":")
            in_tasks = key.strip() == "icl_tasks"
            continue
        if not in_tasks:
            continue
        body = line.strip()
        if body.startswith("-"):
            tasks.append(({}, {"-": number}))
            body = body[1:].strip()
            if not body:
                continue
        if not tasks:
            raise BadInput(f"{where}: expected '- label: ...' under icl_tasks")
        key, colon, value = body.partition(":")
        if not colon or not key.strip():
            raise BadInput(f"{where}: expected 'key: value', got {body!r}")
        tasks[-1][0][key.strip()] = _yaml_scalar(value, where)
        tasks[-1][1][key.strip()] = number
    if not tasks:
        raise BadInput(f"{path}: no tasks under 'icl_tasks:'")
    return tasks


def read_baselines(path: Path) -> dict[str, float]:
    """eval_meta_data.csv: task label -> random baseline as a fraction."""
    rows = iter_csv(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise BadInput(f"{path}: empty file") from None
    columns = {name.strip(): index for index, name in enumerate(header)}
    for needed in ("Eval Task", "Random baseline"):
        if needed not in columns:
            raise BadInput(f"{path}:1: no column '{needed}' (columns: {', '.join(columns)})")
    baselines = {}
    for number, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns["Eval Task"], columns["Random baseline"]):
            raise BadInput(f"{path}:{number}: too few columns")
        label, value = row[columns["Eval Task"]].strip(), row[columns["Random baseline"]].strip()
        try:
            percent = float(value)
        except ValueError:
            raise BadInput(f"{path}:{number}: 'Random baseline' must be a number, got {value!r}") from None
        if not 0 <= percent < 100:
            raise BadInput(f"{path}:{number}: 'Random baseline' must be in [0, 100), got {value}")
        baselines[label] = percent / 100
    return baselines


def _check_item(kind: str, record: dict[str, Any], where: str) -> dict[str, Any]:
    """The fields a task type needs, validated; BadInput at FILE:LINE otherwise."""
    if kind == "language_modeling":
        require(record, "context", str, where)
        if not require(record, "continuation", str, where):
            raise BadInput(f"{where}: field 'continuation' is empty")
        return {"context": record["context"], "continuation": record["continuation"]}
    options_key = "choices" if kind == "multiple_choice" else "context_options"
    options = require(record, options_key, list, where)
    if len(options) < 2 or not all(isinstance(option, str) for option in options):
        raise BadInput(f"{where}: '{options_key}' must be a list of at least 2 strings")
    gold = require(record, "gold", int, where)
    if not 0 <= gold < len(options):
        raise BadInput(f"{where}: 'gold' must be an index in 0..{len(options) - 1}, got {gold}")
    if kind == "multiple_choice":
        return {"query": require(record, "query", str, where), "choices": options, "gold": gold}
    return {"context_options": options, "continuation": require(record, "continuation", str, where), "gold": gold}


def load_items(path: Path, kind: str) -> list[dict[str, Any]]:
    """A task's JSONL file, validated and shuffled into nanochat's order."""
    items = [_check_item(kind, record, f"{path}:{number}") for number, record in iter_jsonl(path)]
    if not items:
        raise BadInput(f"{path}: no records")
    random.Random(SHUFFLE_SEED).shuffle(items)
    return items


def load_bundle(folder: str | Path) -> list[CoreTask]:
    """Every task of a CORE bundle folder (core.yaml, eval_meta_data.csv, eval_data/), validated."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BadInput(f"{folder}: CORE bundle folder not found ([eval] core_bundle / --core-bundle)")
    yaml_path = folder / "core.yaml"
    entries = read_task_list(yaml_path)
    baselines = read_baselines(_bundle_file(folder / "eval_meta_data.csv"))
    tasks, seen = [], set()
    for entry, lines in entries:
        def where(key: str, lines=lines) -> str:
            return f"{yaml_path}:{lines.get(key, lines['-'])}"

        for key in ("label", "dataset_uri", "icl_task_type", "num_fewshot"):
            if key not in entry:
                raise BadInput(f"{where('-')}: task without '{key}'")
        label, kind = str(entry["label"]), entry["icl_task_type"]
        if kind not in TASK_TYPES:
            raise BadInput(f"{where('icl_task_type')}: {label}: icl_task_type must be one of "
                           f"{', '.join(TASK_TYPES)}, got {kind!r}")
        if label in seen:
            raise BadInput(f"{where('label')}: task '{label}' listed twice")
        seen.add(label)
        shots = entry["num_fewshot"]
        shots = shots[0] if isinstance(shots, list) and len(shots) == 1 else shots
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
            raise BadInput(f"{where('num_fewshot')}: {label}: num_fewshot must be [k] with k >= 0, "
                           f"got {entry['num_fewshot']!r}")
        delimiter = entry.get("continuation_delimiter", " ")
        if not isinstance(delimiter, str):
            raise BadInput(f"{where('continuation_delimiter')}: {label}: continuation_delimiter must be a string")
        if label not in baselines:
            raise BadInput(f"{folder / 'eval_meta_data.csv'}: no 'Random baseline' for task '{label}'")
        uri = Path(str(entry["dataset_uri"]))
        if uri.is_absolute() or ".." in uri.parts:  # a bundle reads its own eval_data/, nothing else
            raise BadInput(f"{where('dataset_uri')}: {label}: dataset_uri {str(uri)!r} points outside the "
                           f"bundle's eval_data/")
        data_path = folder / "eval_data" / uri
        tasks.append(CoreTask(label=label, kind=kind, shots=shots, delimiter=delimiter,
                              random_baseline=baselines[label], items=load_items(_bundle_file(data_path), kind),
                              source=str(data_path)))
    return tasks


def available_tasks(data_dir: str | Path) -> list[CoreTask]:
    """The CORE tasks whose data picochat's eval folder already has, in the bundle's form and with
    the bundle's settings: ARC-Easy, ARC-Challenge (10-shot), HellaSwag (10-shot and 0-shot)."""
    data_dir = Path(data_dir)
    tasks = []
    for label, task in (("arc_easy", "arc-easy"), ("arc_challenge", "arc-challenge")):
        path = data_dir / common.TASKS[task][0]
        if path.exists():
            tasks.append(CoreTask(label, "multiple_choice", 10, "\nAnswer: ", 0.25,
                                  load_items(path, "multiple_choice"), str(path)))
    path = data_dir / common.TASKS["hellaswag"][0]
    if path.exists():
        # picochat's HellaSwag file is the preprocessed val set; its "label: ctx" context is the
        # bundle's query. One list, shuffled once, serves both the 10-shot and the 0-shot task.
        items = [{"query": item.context, "choices": item.choices, "gold": item.gold} for item in hellaswag.load(path)]
        random.Random(SHUFFLE_SEED).shuffle(items)
        tasks.append(CoreTask("hellaswag_zeroshot", "multiple_choice", 0, " ", 0.25, items, str(path)))
        tasks.append(CoreTask("hellaswag", "multiple_choice", 10, " ", 0.25, items, str(path)))
    if not tasks:
        raise BadInput(f"{data_dir}: no CORE task data (ARC or HellaSwag) in the eval data folder; "
                       f"set [eval] core_bundle to a CORE bundle folder or pass --data-dir")
    return tasks


def load(bundle: str | Path | None, data_dir: str | Path) -> list[CoreTask]:
    """The bundle's tasks when a bundle folder is given, else the ones mapped from the eval data."""
    return load_bundle(bundle) if bundle else available_tasks(data_dir)


def figure_label(tasks: list[CoreTask]) -> str:
    labels = {task.label for task in tasks}
    if labels >= set(CORE_LABELS):
        return "CORE"
    return f"CORE (available tasks: {len(labels & set(CORE_LABELS))} of {len(CORE_LABELS)})"


# ---------------------------------------------------------------------------------------------
# prompts and token rows


def prompts(task: CoreTask, index: int) -> list[tuple[str, str]]:
    """(text before the scored part, scored part) per option of item `index`, with its few shots;
    one pair for a language-modeling item."""
    item, delimiter = task.items[index], task.delimiter
    shots = []
    if task.shots:
        others = [i for i in range(len(task.items)) if i != index]
        chosen = random.Random(FEWSHOT_SEED + index).sample(others, min(task.shots, len(others)))
        shots = [task.items[i] for i in chosen]
    if task.kind == "multiple_choice":
        prefix = "".join(f"{s['query']}{delimiter}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [(f"{prefix}{item['query']}{delimiter}", choice) for choice in item["choices"]]
    if task.kind == "schema":
        prefix = "".join(f"{s['context_options'][s['gold']]}{delimiter}{s['continuation']}\n\n" for s in shots)
        return [(f"{prefix}{option}{delimiter}", item["continuation"]) for option in item["context_options"]]
    prefix = "".join(f"{s['context'].strip()}{delimiter}{s['continuation']}\n\n" for s in shots)
    return [(f"{prefix}{item['context'].strip()}{delimiter}", item["continuation"])]


def _common_length(sequences: list[list[int]], from_end: bool = False) -> int:
    """Length of the prefix (or suffix) every sequence shares."""
    shortest = min(len(s) for s in sequences)
    for n in range(shortest):
        position = -1 - n if from_end else n
        if any(s[position] != sequences[0][position] for s in sequences):
            return n
    return shortest


def token_rows(tokenizer, task: CoreTask, index: int, max_len: int) -> list[tuple[list[int], int]]:
    """(token ids, start) per option: ids[start:] is what gets scored. As in nanochat, the scored
    span is found in token space: after the prefix all options share (multiple choice), the suffix
    they share (schema), or after the prompt without its continuation (language modeling; trailing
    whitespace stripped so the continuation starts on a token boundary). Rows longer than the model's
    context lose tokens from the left; at least one token is always scored."""
    bos = tokenizer.bos_id
    pairs = prompts(task, index)
    full = [[bos] + tokenizer.encode(before + after) for before, after in pairs]
    if task.kind == "multiple_choice":
        starts = [_common_length(full)] * len(full)
    elif task.kind == "schema":
        suffix = _common_length(full, from_end=True)
        starts = [len(ids) - suffix for ids in full]
    else:
        without = [bos] + tokenizer.encode(pairs[0][0].strip())
        starts = [_common_length([without, full[0]])]
    rows = []
    for ids, start in zip(full, starts, strict=True):
        start = max(1, min(start, len(ids) - 1))
        if len(ids) > max_len:
            cut = len(ids) - max_len
            ids, start = ids[cut:], max(1, start - cut)
        rows.append((ids, start))
    return rows


# ---------------------------------------------------------------------------------------------
# scoring


def summarize(tasks: list[CoreTask], accuracies: dict[str, float], counts: dict[str, int]) -> TaskResult:
    """The CORE figure from each task's accuracy: the mean centered accuracy, with every task's
    accuracy, centered score, n, shots and baseline in the details."""
    per_task = {}
    for task in tasks:
        if task.label not in accuracies:
            continue
        accuracy = accuracies[task.label]
        per_task[task.label] = {"accuracy": accuracy, "centered": centered(accuracy, task.random_baseline),
                                "n": counts[task.label], "type": task.kind, "shots": task.shots,
                                "random_baseline": task.random_baseline}
    score = centered_mean([entry["centered"] for entry in per_task.values()])
    return TaskResult(task="core", accuracy=None, n=sum(counts.values()), chance=None,
                      details={"core": score, "label": figure_label(tasks), "tasks": per_task,
                               "scoring": "few-shot, centered (accuracy - baseline) / (1 - baseline), mean over tasks",
                               "sources": sorted({task.source for task in tasks})})


def evaluated_items(task: CoreTask, limit: int | None) -> int:
    return min(limit, len(task.items)) if limit else len(task.items)


def row_count(tasks: list[CoreTask], limit: int | None) -> int:
    """Token rows `evaluate` scores (one per option; one per language-modeling item): its progress total."""
    return sum(1 if task.kind == "language_modeling" else
               len(item.get("choices") or item.get("context_options"))
               for task in tasks for item in task.items[: evaluated_items(task, limit)])


def evaluate(model, tokenizer, tasks: list[CoreTask], device, max_len: int, limit: int | None,
             progress: Progress = no_progress) -> TaskResult:
    """Each task on its first `limit` items (all when 0), then the CORE figure."""
    from workbench.evals.multiple_choice import continuation_scores

    planned = []  # (task, item index, rows)
    for task in tasks:
        planned += [(task, index, token_rows(tokenizer, task, index, max_len))
                    for index in range(evaluated_items(task, limit))]
    total = sum(len(rows) for _, _, rows in planned)
    done = 0
    correct: dict[str, list[bool]] = {task.label: [] for task in tasks}
    for task in tasks:
        mine = [(index, rows) for owner, index, rows in planned if owner is task]
        flat = [row for _, rows in mine for row in rows]
        offset = done
        scores = continuation_scores(model, flat, tokenizer.vocab_size, device, max_len,
                                     lambda finished, _total, offset=offset: progress(offset + finished, total))
        done += len(flat)
        position = 0
        for index, rows in mine:
            mine_scores = scores[position: position + len(rows)]
            position += len(rows)
            if task.kind == "language_modeling":
                correct[task.label].append(mine_scores[0].greedy)
            else:
                best = max(range(len(rows)), key=lambda j, s=mine_scores: s[j].logprob_mean)
                correct[task.label].append(best == task.items[index]["gold"])
    accuracies = {label: sum(hits) / len(hits) for label, hits in correct.items() if hits}
    counts = {label: len(hits) for label, hits in correct.items() if hits}
    return summarize(tasks, accuracies, counts)


# ---------------------------------------------------------------------------------------------
# ChatCORE


def chatcore(results: dict[str, dict[str, Any]]) -> TaskResult | None:
    """nanochat's ChatCORE from the results of its five tasks (None while one is missing): the mean
    centered accuracy (acc - chance) / (1 - chance) over ARC-Easy, ARC-Challenge, MMLU (chance 1/4),
    GSM8K and HumanEval (chance 0). Like nanochat, a chat checkpoint's multiple-choice accuracy is
    its letter answer; a base checkpoint has none and is scored by likelihood (noted per task)."""
    per_task = {}
    for name in common.CHATCORE_TASKS:
        entry = results.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("accuracy"), (int, float)):
            return None
        letter = entry.get("letter_accuracy")
        accuracy, form = (letter, "letter") if isinstance(letter, (int, float)) else (entry["accuracy"], "likelihood")
        if name in ("gsm8k", "humaneval"):
            form = "generation"
        chance = common.TASKS[name][1] or 0.0
        per_task[name] = {"accuracy": accuracy, "centered": centered(accuracy, chance), "chance": chance,
                          "n": entry.get("n"), "form": form}
    score = centered_mean([entry["centered"] for entry in per_task.values()])
    return TaskResult(task="chatcore", accuracy=None, n=sum(int(e["n"] or 0) for e in per_task.values()),
                      chance=None, details={"chatcore": score, "tasks": per_task,
                                            "scoring": "mean of (accuracy - chance) / (1 - chance)"})
