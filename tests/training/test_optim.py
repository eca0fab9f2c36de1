from __future__ import annotations

import math

import pytest
import torch

from fastbind.errors import UserError
from fastbind.training.config import apply_overrides
from fastbind.training.optim import OptimConfig, build_optimizer, build_scheduler, clip_grad, lr_factor


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


@pytest.mark.parametrize(
    "name,cls",
    [
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
        ("sgd", torch.optim.SGD),
    ],
)
def test_build_each_optimizer(name: str, cls: type) -> None:
    cfg = OptimConfig(name=name, lr=0.01, momentum=0.5, weight_decay=0.1, eps=1e-6, alpha=0.9, betas=(0.8, 0.95))
    model = _model()
    opt = build_optimizer(model.parameters(), cfg)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 0.1
    if name in ("adam", "adamw"):
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
    if name == "rmsprop":
        assert group["alpha"] == 0.9 and group["momentum"] == 0.5 and group["eps"] == 1e-6
    if name == "sgd":
        assert group["momentum"] == 0.5
    before = model.weight.detach().clone()
    model(torch.randn(2, 4)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_sgd_step_matches_formula() -> None:
    model = _model()
    opt = build_optimizer(model.parameters(), OptimConfig(name="sgd", lr=0.1))
    model(torch.ones(1, 4)).sum().backward()
    expected = model.weight.detach() - 0.1 * model.weight.grad
    opt.step()
    torch.testing.assert_close(model.weight.detach(), expected)


def test_rmsprop_defaults() -> None:
    cfg = OptimConfig(name="rmsprop")
    assert (cfg.lr, cfg.alpha, cfg.eps) == (1e-3, 0.99, 1e-8)


def test_config_via_overrides() -> None:
    cfg = apply_overrides(OptimConfig(), ["name=rmsprop", "lr=3e-4", "betas=0.8,0.9", "schedule=cosine"])
    assert cfg.name == "rmsprop" and cfg.lr == 3e-4 and cfg.betas == (0.8, 0.9) and cfg.schedule == "cosine"
    with pytest.raises(UserError, match="not one of adam, adamw, rmsprop, sgd"):
        apply_overrides(OptimConfig(), ["name=lion"])
    with pytest.raises(UserError, match="bad value lr=0: must be > 0"):
        apply_overrides(OptimConfig(), ["lr=0"])


@pytest.mark.parametrize(
    "kwargs", [{"lr": -1.0}, {"alpha": 1.0}, {"betas": (0.9, 1.0)}, {"warmup_steps": -1}, {"clip": -1.0}]
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(UserError):
        OptimConfig(**kwargs)


def _lrs(cfg: OptimConfig, total: int, n: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg, total)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant_with_warmup() -> None:
    lrs = _lrs(OptimConfig(lr=0.1, warmup_steps=4), total=10, n=6)
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_cosine_schedule_formula() -> None:
    cfg = OptimConfig(lr=0.2, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    total = 12
    lrs = _lrs(cfg, total, 14)
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.2)
    for step in (2, 5, 7, 12, 13):
        p = min(1.0, (step - 2) / 10)
        expected = 0.2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
        assert lrs[step] == pytest.approx(expected)
    assert lrs[7] == pytest.approx(0.2 * 0.55)  # halfway: midpoint between peak and floor
    assert lrs[13] == pytest.approx(0.02)  # stays at the floor past the end


def test_linear_schedule_formula() -> None:
    lrs = _lrs(OptimConfig(lr=1.0, schedule="linear"), total=4, n=6)
    assert lrs == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    assert lr_factor(2, OptimConfig(schedule="linear"), 4) == pytest.approx(0.5)


def test_scheduler_needs_total_steps() -> None:
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(schedule="cosine"))
    with pytest.raises(UserError, match="total_steps"):
        build_scheduler(opt, OptimConfig(schedule="cosine"), 0)


def test_scheduler_state_dict_resumes() -> None:
    cfg = OptimConfig(lr=1.0, schedule="linear")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg, 10)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer([p], cfg)
    sched2 = build_scheduler(opt2, cfg, 10)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.6)


def test_clip_grad() -> None:
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    unused = torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.tensor([3.0, 0.0])
    b.grad = torch.tensor([4.0])
    norm = clip_grad([a, b, unused], OptimConfig(clip=0.0))
    assert float(norm) == pytest.approx(5.0)
    assert a.grad.tolist() == [3.0, 0.0]  # clip=0 leaves gradients alone
    norm = clip_grad([a, b, unused], OptimConfig(clip=1.0))
    assert float(norm) == pytest.approx(5.0)  # the norm before clipping
    total = torch.cat([a.grad, b.grad]).norm()
    assert float(total) == pytest.approx(1.0, rel=1e-4)
    assert float(clip_grad([unused], OptimConfig(clip=1.0))) == 0.0
