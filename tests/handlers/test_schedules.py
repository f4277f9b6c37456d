"""Tests for scdl_monai.handlers.schedules (docs/methods.md#shared-losses-and-schedules; DHC / GA timings)."""

import math

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import LrScheduleHandler

from scdl_monai.handlers.schedules import UnsupWeightSchedule, poly_lr, poly_lr_scheduler, sigmoid_rampup
from scdl_monai.methods.supervised import Supervised


def sgd(lr):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lr_of(optimizer):
    return lambda engine: optimizer.param_groups[0]["lr"]


def run_engine(handlers, epochs, epoch_length, record, optimizer=None):
    """An ignite engine whose step only calls ``optimizer.step()``; ``record(engine)`` runs at every
    ITERATION_STARTED after the handlers (attached first), i.e. sees the values that iteration uses."""
    engine = Engine(lambda e, b: optimizer.step() if optimizer is not None else None)
    for h in handlers:
        h.attach(engine)
    values = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: values.append(record(e)))
    engine.run(range(epoch_length), max_epochs=epochs)
    return values


# ---------------------------------------------------------------- sigmoid ramp-up
def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 200, 0.1) == pytest.approx(0.1 * math.exp(-5))
    assert sigmoid_rampup(100, 200, 0.1) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert sigmoid_rampup(200, 200, 0.1) == pytest.approx(0.1)
    assert sigmoid_rampup(500, 200, 0.1) == pytest.approx(0.1)  # clipped at R
    assert sigmoid_rampup(-3, 200, 0.1) == pytest.approx(0.1 * math.exp(-5))  # clipped at 0
    assert sigmoid_rampup(7, 0, 0.1) == 0.1  # no ramp
    with pytest.raises(ValueError, match="ramp_epochs must be >= 0"):
        sigmoid_rampup(1, -1)


def test_unsup_weight_per_epoch_lags_one_epoch_like_dhc():
    method = Supervised(torch.nn.Conv3d(1, 2, 1))
    schedule = UnsupWeightSchedule(method, w_max=0.1, ramp_epochs=4)
    assert schedule.lag == 1
    values = run_engine([schedule], epochs=6, epoch_length=2, record=lambda e: method.unsup_weight.item())
    # DHC: cps_w = w(0) before training; after epoch i, cps_w = w(i) -> epoch i uses w(max(i-1, 0))
    expected = [sigmoid_rampup(max(i - 1, 0), 4, 0.1) for i in range(6) for _ in range(2)]
    assert values == pytest.approx(expected, rel=1e-6)
    textbook = UnsupWeightSchedule(method, w_max=0.1, ramp_epochs=4, lag=0)
    values = run_engine([textbook], epochs=3, epoch_length=1, record=lambda e: method.unsup_weight.item())
    assert values == pytest.approx([sigmoid_rampup(i, 4, 0.1) for i in range(3)], rel=1e-6)


def test_unsup_weight_per_iteration():
    method = Supervised(torch.nn.Conv3d(1, 2, 1))
    schedule = UnsupWeightSchedule(method, w_max=1.0, ramp_epochs=5, epoch_level=False)
    values = run_engine([schedule], epochs=2, epoch_length=4, record=lambda e: method.unsup_weight.item())
    assert values == pytest.approx([sigmoid_rampup(i, 5, 1.0) for i in range(8)], rel=1e-6)


def test_unsup_weight_schedule_errors():
    with pytest.raises(TypeError, match="set_unsup_weight"):
        UnsupWeightSchedule(torch.nn.Linear(1, 1), 0.1, 10)
    method = Supervised(torch.nn.Conv3d(1, 2, 1))
    with pytest.raises(ValueError, match="lag must be >= 0"):
        UnsupWeightSchedule(method, 0.1, 10, lag=-1)


# ---------------------------------------------------------------- poly LR
def test_poly_lr_closed_form():
    assert poly_lr(0, 200, 0.03) == 0.03
    assert poly_lr(100, 200, 0.03) == pytest.approx(0.03 * 0.5**0.9)
    assert poly_lr(200, 200, 0.03) == 0.0
    assert poly_lr(1, 200, 0.03, lag=1) == 0.03
    assert poly_lr(2, 200, 0.03, lag=1) == pytest.approx(0.03 * (1 - 1 / 200) ** 0.9)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        poly_lr(0, 0, 0.1)


def test_per_epoch_poly_lr_with_lr_schedule_handler_matches_dhc():
    # DHC: epoch 0 at base lr; after epoch i the lr becomes base·(1 - i/E)^0.9 -> epoch i uses poly(i - 1)
    epochs, base = 6, 0.03
    opt = sgd(base)
    scheduler = poly_lr_scheduler(opt, total_steps=epochs, lag=1)
    handler = LrScheduleHandler(scheduler, epoch_level=True, print_lr=False)
    values = run_engine([handler], epochs=epochs, epoch_length=3, record=lr_of(opt), optimizer=opt)
    expected = [base * (1 - max(i - 1, 0) / epochs) ** 0.9 for i in range(epochs) for _ in range(3)]
    assert values == pytest.approx(expected, rel=1e-9)


def test_per_epoch_poly_lr_without_lag():
    epochs, base = 5, 0.01
    opt = sgd(base)
    scheduler = poly_lr_scheduler(opt, total_steps=epochs)
    assert isinstance(scheduler, torch.optim.lr_scheduler.PolynomialLR)
    handler = LrScheduleHandler(scheduler, epoch_level=True, print_lr=False)
    values = run_engine([handler], epochs=epochs, epoch_length=1, record=lr_of(opt), optimizer=opt)
    assert values == pytest.approx([poly_lr(i, epochs, base) for i in range(epochs)], rel=1e-9)


def test_per_iteration_poly_lr_matches_ga_formula():
    # GA / SSL4MIS: lr = 0.01·(1 - it/17000)^0.9, updated after every iteration
    opt = sgd(0.01)
    scheduler = poly_lr_scheduler(opt, total_steps=17000)
    handler = LrScheduleHandler(scheduler, epoch_level=False, print_lr=False)
    values = run_engine([handler], epochs=2, epoch_length=5, record=lr_of(opt), optimizer=opt)
    assert values == pytest.approx([0.01 * (1 - it / 17000) ** 0.9 for it in range(10)], rel=1e-9)


def test_poly_lr_scheduler_far_steps_and_resume():
    opt = sgd(0.01)
    scheduler = poly_lr_scheduler(opt, total_steps=100, lag=1)
    for _ in range(60):
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(poly_lr(60, 100, 0.01, lag=1), rel=1e-9)
    # a fresh scheduler restored from state_dict continues identically
    opt2 = sgd(0.01)
    restored = poly_lr_scheduler(opt2, total_steps=100, lag=1)
    restored.load_state_dict(scheduler.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for _ in range(10):
        for o, s in ((opt, scheduler), (opt2, restored)):
            o.step()
            s.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(poly_lr(70, 100, 0.01, lag=1), rel=1e-9)


def test_poly_lr_scheduler_errors():
    with pytest.raises(ValueError, match="lag must be >= 0"):
        poly_lr_scheduler(sgd(0.1), 10, lag=-2)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        poly_lr_scheduler(sgd(0.1), 0)
