"""StopOnNonFiniteLoss: a NaN/Inf loss term stops training before the weights are updated."""

import math

import pytest
import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from scdl_monai.handlers.checkpoint import AtomicCheckpointSaver
from scdl_monai.handlers.nonfinite import NonFiniteLossError, StopOnNonFiniteLoss


def _trainer(losses, steps):
    """An engine shaped like SemiSupervisedTrainer: output dict, LOSS_COMPLETED, then the 'optimizer step'."""

    def step(engine, batch):
        loss_u = losses[engine.state.iteration - 1]
        engine.state.output = {"image": torch.zeros(1), "pred": torch.zeros(1), "loss": torch.tensor(1.0 + loss_u),
                               "loss_sup": torch.tensor(1.0), "loss_u": torch.tensor(loss_u), "unsup_weight": 0.1}  # fmt: skip
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        steps.append(engine.state.iteration)
        return engine.state.output

    engine = Engine(step)
    engine.register_events(*IterationEvents)
    return engine


def test_nan_loss_raises_naming_epoch_iteration_and_terms_before_the_step(tmp_path):
    steps = []
    engine = _trainer([0.5, 0.4, math.nan, 0.3], steps)
    StopOnNonFiniteLoss(ckpt_dir=str(tmp_path)).attach(engine)
    with pytest.raises(NonFiniteLossError) as err:
        engine.run([0, 1], max_epochs=2)
    message = str(err.value)
    assert message.startswith("training stopped: non-finite loss at epoch 2, iteration 3 (loss = nan, loss_u = nan)")
    assert "loss_sup" not in message and err.value.terms.keys() == {"loss", "loss_u"}
    assert f"No checkpoint was written yet in {tmp_path}" in message
    assert steps == [1, 2]  # the failing iteration never reached the optimizer step


def test_inf_loss_names_the_last_good_checkpoint(tmp_path):
    steps = []
    engine = _trainer([0.5, math.inf], steps)
    model = torch.nn.Linear(1, 1)
    state = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}
    AtomicCheckpointSaver(str(tmp_path), state, save_interval=1, save_final=True).attach(engine)
    StopOnNonFiniteLoss(ckpt_dir=str(tmp_path)).attach(engine)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, iteration 2 \(loss = inf, loss_u = inf\)") as err:
        engine.run([0], max_epochs=3)
    assert f"Last good checkpoint: {tmp_path / 'checkpoint_epoch=1.pt'} (lower learning_rate" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]


def test_finite_losses_pass():
    steps = []
    engine = _trainer([0.5, 0.4, 0.3], steps)
    StopOnNonFiniteLoss().attach(engine)
    engine.run([0], max_epochs=3)
    assert steps == [1, 2, 3]
