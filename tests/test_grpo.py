"""GRPO: rewards, advantage math, masking of prompt and tool output, the loss; a real tiny run (slow)."""

import math

import pytest
import torch

from workbench import stages
from workbench.tasks import arc, gsm8k
from workbench.tasks.answers import chosen_letter as extract_letter
from workbench.tasks.answers import final_number
from workbench.tasks.answers import parse_text as parse_completion
from workbench.tasks.arc import reward as letter_reward
from workbench.tasks.gsm8k import reward as numeric_reward
from workbench.tasks.tool import reward as tool_reward
from workbench.train import grpo

TOOL_REPLY = ("<|python_start|>4*12-7<|python_end|><|output_start|>41<|output_end|>"
              "The answer is 41.<|assistant_end|>")


# ---- rewards ----


def test_numeric_reward_reads_the_models_own_final_number():
    assert numeric_reward(TOOL_REPLY, 41) == 1.0
    assert numeric_reward(TOOL_REPLY, "41") == 1.0
    assert numeric_reward(TOOL_REPLY, 40) == 0.0
    assert numeric_reward("She makes 9 * 2 = $18 a day.\n#### 18", 18) == 1.0
    assert numeric_reward("#### 1,250", 1250) == 1.0
    assert numeric_reward("no number at all", 3) == 0.0
    # an answer given by the calculator's output alone is the model's answer, as the GSM8K eval reads it
    # (issue 17: it used to score 0.0 here and count right in the eval)
    assert numeric_reward("<|python_start|>40+1<|python_end|><|output_start|>41<|output_end|>", 41) == 1.0
    assert numeric_reward("<|python_start|>40+1<|python_end|><|output_start|>41<|output_end|>", 40) == 0.0
    assert float(final_number("the answer is -3.5.")) == -3.5


def test_parse_completion_separates_tool_calls_and_thoughts():
    parsed = parse_completion("<|think_start|>hmm<|think_end|>" + TOOL_REPLY)
    assert parsed.tool_calls == [("4*12-7", "41")]
    assert parsed.thought == "hmm"
    assert parsed.answer_text == "The answer is 41."
    assert parsed.ended
    assert not parse_completion("The answer is").ended


def test_letter_and_tool_rewards():
    assert letter_reward("The answer is C.<|assistant_end|>", "C") == 1.0
    assert letter_reward("B<|assistant_end|>", "C") == 0.0
    assert extract_letter("(D) because it is heavier") == "D"
    assert extract_letter("I do not know") is None
    assert tool_reward(TOOL_REPLY, 41) == 1.0
    assert tool_reward("The answer is 41.", 41) == 0.5  # right, without the calculator
    broken = "<|python_start|>4*(<|python_end|><|output_start|>Error: cannot parse<|output_end|>The answer is 41."
    assert tool_reward(broken, 41) == 0.5
    assert tool_reward(TOOL_REPLY, 42) == 0.0


# ---- advantages and loss ----


def test_group_advantages():
    rewards = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.5]]
    plain = grpo.group_advantages(rewards, normalize_std=False)
    assert torch.allclose(plain[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert torch.equal(plain[1], torch.zeros(4))  # no variance: nothing to learn
    assert torch.allclose(plain.sum(dim=1), torch.zeros(3), atol=1e-6)
    scaled = grpo.group_advantages(rewards, normalize_std=True)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    assert torch.allclose(scaled[0], plain[0] / (std + grpo.ADVANTAGE_EPSILON))
    assert torch.equal(scaled[1], torch.zeros(4))


def test_loss_is_token_level_normalized_and_masked():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], requires_grad=True)
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([1.0, -2.0])
    loss, stats = grpo.policy_loss(logprobs, mask, advantages)
    expected = -((-2.0 * 1) + (-3.0 * 1) + (-0.5 * -2) + (-0.5 * -2)) / 4
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    # masked tokens (prompt, tool output, padding) get no gradient; the rest -advantage / count
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.25, -0.25], [0.5, 0.5, 0.0]]))
    # a normalizer over all micro-batches replaces the local count
    half, _ = grpo.policy_loss(logprobs.detach(), mask, advantages, normalizer=8)
    assert math.isclose(float(half), expected / 2, rel_tol=1e-6)
    assert stats == {}


def test_clipping_and_kl():
    logprobs = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0]])  # ratio e^0.5 on the first token, 1 on the second
    mask = torch.ones(1, 2)
    loss, stats = grpo.policy_loss(logprobs, mask, torch.tensor([1.0]), old_logprobs=old, clip_epsilon=0.2)
    loss.backward()
    assert logprobs.grad[0, 0] == 0  # clipped: positive advantage and ratio above 1 + eps
    assert logprobs.grad[0, 1] == pytest.approx(-0.5)
    assert stats["clip_fraction"] == 0.5
    # the KL term is zero (with zero gradient) when the policy equals the reference
    same = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, stats = grpo.policy_loss(same, mask, torch.zeros(1), ref_logprobs=same.detach().clone(), kl_coef=0.1)
    loss.backward()
    assert loss.item() == 0 and stats["kl"] == 0 and torch.equal(same.grad, torch.zeros(1, 2))
    moved, stats = grpo.policy_loss(torch.tensor([[-1.0]]), torch.ones(1, 1), torch.zeros(1),
                                    ref_logprobs=torch.tensor([[-2.0]]), kl_coef=1.0)
    assert stats["kl"] == pytest.approx(math.exp(-1) + 1 - 1) and float(moved) > 0


def test_loss_normalizations_weight_long_and_short_completions_as_named():
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])  # a 4-token and a 1-token completion
    token = grpo.loss_weights(mask, "token")
    assert torch.allclose(token, mask / 5)  # every token alike: the long answer holds 4/5 of the weight
    sequence = grpo.loss_weights(mask, "sequence")
    assert torch.allclose(sequence.sum(dim=1), torch.tensor([0.5, 0.5]))  # each completion alike
    constant = grpo.loss_weights(mask, "constant", max_new_tokens=8)
    assert torch.allclose(constant, mask / 16)
    logprobs = torch.full((2, 4), -1.0, requires_grad=True)
    loss, _ = grpo.policy_loss(logprobs, mask, torch.tensor([1.0, -1.0]), weights=sequence)
    loss.backward()
    assert loss.item() == pytest.approx(0.0) and logprobs.grad[1, 0] == pytest.approx(0.5)


def test_paired_interval_of_a_change_in_accuracy():
    before = [False] * 60 + [True] * 40
    after = [True] * 20 + [False] * 40 + [True] * 40  # 20 prompts fixed, none broken
    change, low, high = grpo.paired_difference(before, after)
    assert change == pytest.approx(0.2) and 0.1 < low < 0.2 < high < 0.3
    same, low, high = grpo.paired_difference(before, before)
    assert (same, low, high) == (0.0, 0.0, 0.0)
    noisy = [True, False] * 50
    change, low, high = grpo.paired_difference(noisy, noisy[1:] + noisy[:1])  # every prompt flips
    assert change == 0 and low < -0.15 and high > 0.15
    assert grpo.proportion_interval([True] * 50 + [False] * 50) == pytest.approx(1.959964 * 0.05)


def test_a_mixture_of_tasks_draws_by_weight_and_scores_each_prompt_by_its_task(tiny_config):
    import dataclasses

    cfg = dataclasses.replace(tiny_config, grpo=dataclasses.replace(
        tiny_config.grpo, tasks=["arith:3", "tool:1"], held_out=10))
    task = grpo.build_task(cfg)
    prompts = [task.prompt_at(i) for i in range(400)]
    assert prompts[:20] == [task.prompt_at(i) for i in range(20)]  # a pure function of the index
    share = sum(p.task == "arith" for p in prompts) / len(prompts)
    assert 0.68 < share < 0.82, share
    assert [t.name for t in task.evaluated()] == ["arith", "tool"] and len(task.held_out) == 20
    tool_prompt = next(p for p in prompts if p.task == "tool")
    plain = f"The answer is {tool_prompt.answer}.<|assistant_end|>"
    assert task.scorer_for(tool_prompt).reward(plain, tool_prompt.answer) == 0.5  # tool's reward: no call
    arith_prompt = next(p for p in prompts if p.task == "arith")
    assert task.scorer_for(arith_prompt).reward(f"The answer is {arith_prompt.answer}.", arith_prompt.answer) == 1


def test_build_batch_masks_prompt_and_forced_tool_output():
    group = grpo.Group(grpo.Prompt([{"role": "user", "content": "q"}], 3), prompt_ids=[1, 2, 3])
    group.completions = [[10, 11, 12, 13, 14], [20]]
    group.sampled_masks = [[1, 1, 0, 0, 1], [1]]
    inputs, targets, mask = grpo.build_batch([group], pad_id=0)
    assert inputs.tolist() == [[1, 2, 3, 10, 11, 12, 13], [1, 2, 3, 0, 0, 0, 0]]
    # targets 10, 11 and 14 were sampled; 12, 13 were forced tool output; prompt targets never count
    assert targets.tolist() == [[-1, -1, 10, 11, -1, -1, 14], [-1, -1, 20, -1, -1, -1, -1]]
    assert mask.tolist() == [[0, 0, 1, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0]]


def test_group_stats():
    a = grpo.Group(grpo.Prompt([], 1), [1], completions=[[1, 2], [1, 2, 3, 4]], rewards=[1.0, 0.0],
                   correct=[True, False])
    b = grpo.Group(grpo.Prompt([], 1), [1], completions=[[1], [1]], rewards=[0.0, 0.0], correct=[False, False])
    stats = grpo.group_stats([a, b])
    assert stats["reward_mean"] == 0.25 and stats["accuracy"] == 0.25
    assert stats["zero_variance_fraction"] == 0.5
    assert stats["completion_length"] == 2.0
    assert stats["reward_std"] == pytest.approx(math.sqrt(0.1875))


def test_file_tasks_read_the_shared_data(tiny_config):
    from pathlib import Path

    if not Path(tiny_config.eval.data_dir, "gsm8k", "train.jsonl").exists():
        pytest.skip("shared data not present")
    import dataclasses

    for name in ("gsm8k", "arc", "arith", "tool"):
        cfg = dataclasses.replace(tiny_config, grpo=dataclasses.replace(tiny_config.grpo, task=name))
        task = grpo.build_task(cfg)
        prompt = task.prompt_at(0)
        assert prompt.messages[0]["role"] == "user" and prompt.answer is not None
        assert task.prompt_at(5) == task.prompt_at(5)  # deterministic: a resumed run sees the same prompts
        assert len(task.held_out) == cfg.grpo.held_out
    arc_prompts = arc.prompts(Path(tiny_config.eval.data_dir, "arc", "ai2-format", "ARC-Easy-Dev.jsonl"))
    assert all(p.answer in "ABCDE" for p in arc_prompts) and "A. " in arc_prompts[0].messages[0]["content"]


def test_bad_task_files_are_bad_input(tmp_path):
    from workbench.errors import BadInput

    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(BadInput, match="train.jsonl:1"):
        gsm8k.prompts(bad)
    bad.write_text("{oops\n")
    with pytest.raises(BadInput, match="train.jsonl:1: not valid JSON"):
        gsm8k.prompts(bad)


# ---- a real run ----


def no_letter_e(completion, answer):
    """A toy reward the pretrained tiny model earns some of the time: answer without the letter e.
    Rewards read the parsed completion (tasks/answers.py), as every task's reward does."""
    words = completion.answer_text
    return 1.0 if words.strip() and "e" not in words.lower() else 0.0


@pytest.mark.slow
def test_tiny_grpo_run_raises_the_reward_and_resumes(make_tiny_config, tiny_checkpoint):
    from workbench import runs
    from workbench.checkpoint import load_checkpoint

    prompt = grpo.Prompt([{"role": "user", "content": "Speak."}], None)
    task = grpo.Task("no-e", lambda index: prompt, [prompt] * 4, no_letter_e, lambda t, a: no_letter_e(t, a) == 1)
    cfg = make_tiny_config(grpo={"init_from": str(tiny_checkpoint), "steps": 30, "group_size": 8,
                                 "prompts_per_step": 2, "max_new_tokens": 6, "lr_scale": 0.5, "save_every": 15})
    result = grpo.grpo(cfg, verbose=False, task=task)
    assert result.step == 30 and not result.stopped
    records = runs.read_metrics(stages.run_dir(cfg, "grpo"), kind="grpo")
    assert [r["step"] for r in records] == list(range(1, 31))
    for field in ("reward_mean", "reward_std", "zero_variance_fraction", "completion_length", "accuracy",
                  "loss", "lr"):
        assert all(r[field] is not None for r in records), field
    first = sum(r["reward_mean"] for r in records[:8]) / 8
    last = sum(r["reward_mean"] for r in records[-8:]) / 8
    assert 0 < first < 0.9 and last > first + 0.2, (first, last)
    assert len(runs.read_metrics(stages.run_dir(cfg, "grpo"), kind="train")) == 30
    meta = load_checkpoint(result.last_checkpoint).meta
    assert meta["stage"] == "grpo" and meta["init_from"] == str(tiny_checkpoint)

    # resume from step 15: the same prompts, samples and updates as the uninterrupted run
    import shutil

    cut = make_tiny_config(grpo=dict(cfg.grpo.__dict__, init_from=str(tiny_checkpoint)))
    shutil.copytree(stages.run_dir(cfg, "grpo") / "checkpoints" / "step_000015",
                    stages.run_dir(cut, "grpo") / "checkpoints" / "step_000015")
    grpo.grpo(cut, resume=True, verbose=False, task=task)
    resumed = runs.read_metrics(stages.run_dir(cut, "grpo"), kind="grpo")
    assert [r["step"] for r in resumed] == list(range(16, 31))
    assert [r["reward_mean"] for r in resumed] == [r["reward_mean"] for r in records[15:]]


@pytest.mark.slow
def test_iterations_per_batch_make_the_clip_bite_and_the_end_is_compared_with_the_start(make_tiny_config,
                                                                                        tiny_checkpoint):
    from workbench import runs

    prompts = [grpo.Prompt([{"role": "user", "content": word}], None) for word in ("Speak.", "Say it.", "Go.")]
    task = grpo.Task("no-e", lambda index: prompts[index % 3], prompts * 4, no_letter_e,
                     lambda t, a: no_letter_e(t, a) == 1)
    settings = {"init_from": str(tiny_checkpoint), "steps": 3, "group_size": 6, "prompts_per_step": 2,
                "max_new_tokens": 6, "lr_scale": 0.5, "save_every": 3, "clip_epsilon": 0.05}
    once = make_tiny_config(grpo=settings)
    grpo.grpo(once, verbose=False, task=task)
    assert all(r["clip_fraction"] == 0 for r in runs.read_metrics(stages.run_dir(once, "grpo"), kind="grpo")
               if r["updated"])  # one iteration: the ratio is always 1

    repeated = make_tiny_config(grpo={**settings, "iterations_per_batch": 3, "loss_normalization": "sequence"})
    result = grpo.grpo(repeated, verbose=False, task=task)
    records = [r for r in runs.read_metrics(stages.run_dir(repeated, "grpo"), kind="grpo") if r["updated"]]
    assert records and any(r["clip_fraction"] > 0 for r in records)

    # the end is measured against the frozen start on the same 12 held-out prompts, paired
    start, end = runs.read_metrics(stages.run_dir(repeated, "grpo"), kind="eval")
    assert start["step"] == 0 and start["no-e_held_out"] == 12 and "no-e_greedy_gain" not in start
    change = end["no-e_greedy_accuracy"] - start["no-e_greedy_accuracy"]
    assert end["no-e_greedy_gain"] == pytest.approx(change)
    assert end["no-e_greedy_gain_low"] <= change <= end["no-e_greedy_gain_high"]
    assert result.gains["no-e"][0] == pytest.approx(change)
    assert "no-e held-out greedy accuracy" in runs.read_status(stages.run_dir(repeated, "grpo"))["message"]
