"""The optimizer: Muon's orthogonal updates, the learning rate of every group, the schedule, and a
bit-for-bit resume through safetensors."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench.config import ModelSection, TrainSection
from workbench.errors import BadInput
from workbench.model import build_model
from workbench.optim import build_optimizer, lr_multiplier, newton_schulz

VOCAB = 256


def tiny_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    settings = dict(depth=2, width=64, heads=2, kv_heads=1, seq_len=16, window_pattern="SL")
    settings.update(overrides)
    return build_model(ModelSection(**settings), VOCAB)


def train_steps(model, optimizer, batches, total_steps, train_cfg, first_step=0):
    for step, batch in enumerate(batches, start=first_step):
        optimizer.set_lr_multiplier(lr_multiplier(step, total_steps, train_cfg))
        model(batch[:, :-1], batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("shape", [(64, 64), (32, 128), (128, 32), (3, 48, 16)])
def test_newton_schulz_makes_singular_values_nearly_equal(shape):
    generator = torch.Generator().manual_seed(0)
    *batch, rows, cols = shape
    rank = min(rows, cols)
    # A badly conditioned input: singular values spread over a factor of 20.
    left = torch.linalg.qr(torch.randn(*batch, rows, rank, generator=generator)).Q
    right = torch.linalg.qr(torch.randn(*batch, cols, rank, generator=generator)).Q
    g = left @ torch.diag(torch.logspace(0, -1.3, rank)) @ right.mT
    before = torch.linalg.svdvals(g)
    after = torch.linalg.svdvals(newton_schulz(g))
    assert (before.max(-1).values / before.min(-1).values > 19).all()
    assert after.min() > 0.5 and after.max() < 1.5


def test_muon_update_is_nearly_orthogonal():
    model = tiny_model()
    train_cfg = TrainSection(matrix_lr=0.01)
    optimizer = build_optimizer(model, train_cfg)
    weight = model.blocks[0].mlp.c_fc.weight  # [256, 64]: tall, so scaled by (256/64) ** 0.5
    before = weight.detach().clone()
    generator = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    update = (before - weight.detach()) / (0.01 * 2.0)
    singular = torch.linalg.svdvals(update)
    assert singular.min() > 0.5 and singular.max() < 1.5
    assert singular.max() / singular.min() < 2.5


def test_every_group_gets_the_configured_lr():
    model = tiny_model(width=192, heads=3, kv_heads=1)  # width scale (192 / 768) ** -0.5 = 2
    train_cfg = TrainSection(matrix_lr=0.03, embedding_lr=0.3, unembedding_lr=0.005, scalar_lr=0.4)
    optimizer = build_optimizer(model, train_cfg, lr_scale=0.5)
    lrs = {group["name"]: group["lr"] for group in optimizer.groups}
    expected = {"matrix": 0.03 * 0.5, "embedding": 0.3 * 2 * 0.5, "unembedding": 0.005 * 2 * 0.5,
                "x0_scalar": 0.4 * 0.5, "resid_scalar": 0.4 * 0.01 * 0.5}
    assert lrs == pytest.approx(expected)
    kinds = {group["name"]: group["kind"] for group in optimizer.groups}
    assert kinds["matrix"] == "muon" and {kinds[n] for n in expected if n != "matrix"} == {"adamw"}
    optimizer.set_lr_multiplier(0.25)
    assert {g["name"]: g["lr"] for g in optimizer.groups} == pytest.approx({k: v * 0.25 for k, v in expected.items()})


def test_rounding_noise_barely_moves_the_scalars():
    """At init the scalars' true gradient is zero (identity blocks, then RMSNorm) and autograd
    returns ~1e-11 of noise: Adam must not turn that into a step."""
    model = tiny_model()
    idx = torch.randint(0, VOCAB, (4, 17))
    model(idx[:, :-1], idx[:, 1:]).backward()
    assert model.x0_lambdas.grad.abs().max() < 1e-8  # noise, not signal
    optimizer = build_optimizer(model, TrainSection(scalar_lr=0.5))
    before = model.x0_lambdas.detach().clone()
    optimizer.step()
    # ~1% of the 0.5 step here; with nanochat's eps 1e-10 it was 54%.
    assert (model.x0_lambdas.detach() - before).abs().max() < 0.05 * 0.5


def test_every_parameter_is_in_exactly_one_group():
    model = tiny_model()
    optimizer = build_optimizer(model, TrainSection())
    grouped = [p for group in optimizer.groups for p in group["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))
    muon = next(group for group in optimizer.groups if group["kind"] == "muon")
    assert all(p.ndim == 2 for p in muon["params"])
    assert all(p is not model.wte.weight and p is not model.lm_head.weight for p in muon["params"])


def test_schedule_warms_up_holds_and_warms_down():
    cfg = TrainSection(warmup_steps=10, warmdown_fraction=0.2, final_lr_fraction=0.1)
    curve = [lr_multiplier(step, 100, cfg) for step in range(100)]
    assert curve[0] == pytest.approx(0.1) and curve[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(curve[:10], curve[1:10], strict=False))
    assert all(m == 1.0 for m in curve[10:81])
    assert all(a > b for a, b in zip(curve[80:], curve[81:], strict=False))
    assert curve[99] == pytest.approx(0.1 + 0.9 * 1 / 20)
    assert lr_multiplier(100, 100, cfg) == pytest.approx(0.1)
    plain = TrainSection(warmup_steps=0, warmdown_fraction=0.0)
    assert {lr_multiplier(step, 50, plain) for step in range(50)} == {1.0}


def test_resume_through_safetensors_is_bit_for_bit(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        train_cfg = TrainSection(weight_decay=0.1, warmup_steps=2)
        generator = torch.Generator().manual_seed(3)
        batches = [torch.randint(0, VOCAB, (2, 17), generator=generator) for _ in range(8)]

        straight = tiny_model(seed=0)
        straight_opt = build_optimizer(straight, train_cfg)
        train_steps(straight, straight_opt, batches, 8, train_cfg)

        first = tiny_model(seed=0)
        first_opt = build_optimizer(first, train_cfg)
        train_steps(first, first_opt, batches[:4], 8, train_cfg)
        save_file(first.state_dict(), tmp_path / "model.safetensors")
        save_file(first_opt.state_tensors(), tmp_path / "optimizer.safetensors")

        resumed = tiny_model(seed=1)  # different init: everything must come from the files
        resumed.load_state_dict(load_file(tmp_path / "model.safetensors"))
        resumed_opt = build_optimizer(resumed, train_cfg)
        resumed_opt.load_state_tensors(load_file(tmp_path / "optimizer.safetensors"))
        assert resumed_opt.steps_taken == 4
        train_steps(resumed, resumed_opt, batches[4:], 8, train_cfg, first_step=4)
    finally:
        torch.use_deterministic_algorithms(False)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_optimizer_state_for_another_model_is_bad_input():
    small = tiny_model()
    optimizer = build_optimizer(small, TrainSection())
    small(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long)).backward()
    optimizer.step()
    other = build_optimizer(tiny_model(width=128), TrainSection())
    with pytest.raises(BadInput, match="shape"):
        other.load_state_tensors(optimizer.state_tensors())
    with pytest.raises(BadInput, match="unexpected"):
        other.load_state_tensors({"steps_taken": torch.tensor(1), "nope.momentum": torch.zeros(1)})
