"""Tests for scdl_monai.handlers.ema (EMA teacher update after each optimizer step)."""

import pytest
import torch
from ignite.engine import Engine, Events

from scdl_monai.handlers.ema import EMATeacherUpdate


class Recorder:
    """Stands in for a method: records the engine iteration at which update_teacher() runs."""

    def __init__(self):
        self.engine = None
        self.calls = []

    def update_teacher(self):
        self.calls.append(self.engine.state.iteration)


def test_calls_update_teacher_after_every_iteration():
    recorder = Recorder()
    engine = Engine(lambda e, b: None)
    recorder.engine = engine
    handler = EMATeacherUpdate(recorder)
    handler.attach(engine)
    handler.attach(engine)  # attaching twice does not double the updates
    engine.run(range(3), max_epochs=2)
    assert recorder.calls == [1, 2, 3, 4, 5, 6]
    assert engine.has_event_handler(handler, Events.ITERATION_COMPLETED)


def test_runs_after_the_step_and_before_later_handlers():
    """The teacher sees the weights of the step just taken; a saver attached later sees the new teacher."""
    student = torch.nn.Parameter(torch.zeros(()))
    teacher = torch.zeros(())
    seen_by_saver = []

    class Method:
        def update_teacher(self):
            teacher.copy_(0.5 * teacher + 0.5 * student.detach())

    def step(engine, batch):
        with torch.no_grad():
            student.add_(1.0)

    engine = Engine(step)
    EMATeacherUpdate(Method()).attach(engine)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen_by_saver.append(teacher.item()))
    engine.run(range(2), max_epochs=1)
    assert seen_by_saver == [0.5, 1.25]  # 0.5·0 + 0.5·1, then 0.5·0.5 + 0.5·2


def test_method_without_update_teacher_is_an_error():
    with pytest.raises(TypeError, match="update_teacher"):
        EMATeacherUpdate(object())
