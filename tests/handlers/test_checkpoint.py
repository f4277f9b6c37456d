"""AtomicCheckpointSaver: a failed or killed save never leaves a half-written checkpoint."""

import os
import signal
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch
from ignite.engine import Engine

from scdl_monai.handlers.checkpoint import latest_checkpoint
from scdl_monai.handlers.checkpoint import PARTIAL_MARK, AtomicCheckpointSaver
from scdl_monai.handlers.nonfinite import NonFiniteLossError


def _engine(model):
    def step(engine, batch):
        with torch.no_grad():
            model.weight.add_(1.0)

    return Engine(step)


def _saver(folder, model, **kwargs):
    state = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}  # 2 keys: checkpoint_*.pt
    return AtomicCheckpointSaver(str(folder), state, save_interval=1, epoch_level=True, **kwargs)


def _half_write_then_fail(obj, f, **kwargs):
    f.write(b"PK\x03\x04 half a zip archive")
    raise OSError("disk full")


def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path):
    model = torch.nn.Linear(2, 2)
    engine = _engine(model)
    _saver(tmp_path, model, n_saved=1).attach(engine)
    engine.run([0], max_epochs=1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=1.pt"]
    saved = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)

    engine.state.max_epochs = 2
    with mock.patch("torch.save", _half_write_then_fail), pytest.raises(OSError, match="disk full"):
        engine.run([0])
    # n_saved=1: ignite asked to delete epoch 1 before writing epoch 2; the deletion waits for a complete file
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=1.pt"]
    assert torch.equal(torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)["model"]["weight"], saved["model"]["weight"])
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=1.pt")


def test_old_checkpoint_is_deleted_after_the_new_one_is_complete_and_fixed_names_are_replaced(tmp_path):
    model = torch.nn.Linear(2, 2)
    engine = _engine(model)
    _saver(tmp_path, model, n_saved=1, save_final=True, final_filename="final.pt").attach(engine)
    engine.run([0], max_epochs=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=2.pt", "final.pt"]
    first = torch.load(tmp_path / "final.pt", weights_only=True)["model"]["weight"]
    engine.state.max_epochs = 3
    with mock.patch("torch.save", _half_write_then_fail), pytest.raises(OSError):
        engine.run([0])
    assert torch.equal(torch.load(tmp_path / "final.pt", weights_only=True)["model"]["weight"], first)


def test_no_final_checkpoint_for_a_non_finite_loss(tmp_path):
    model = torch.nn.Linear(2, 2)

    def step(engine, batch):
        raise NonFiniteLossError("loss = nan", {"loss": float("nan")})

    engine = Engine(step)
    _saver(tmp_path, model, save_final=True, final_filename="checkpoint_final.pt").attach(engine)
    with pytest.raises(NonFiniteLossError):
        engine.run([0], max_epochs=1)
    assert os.listdir(tmp_path) == []


def test_sigkill_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    """A real SIGKILL in the middle of writing a checkpoint (after half of its bytes)."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from ignite.engine import Engine
        from scdl_monai.handlers.checkpoint import AtomicCheckpointSaver
        model = torch.nn.Linear(64, 64)
        engine = Engine(lambda e, b: None)
        state = {{"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}}
        AtomicCheckpointSaver({str(tmp_path)!r}, state, save_interval=1, n_saved=2).attach(engine)
        engine.run([0], max_epochs=1)
        real_save = torch.save
        def killed_halfway(obj, f, **kwargs):
            real_save(obj, f, **kwargs)
            f.flush()
            f.truncate(f.tell() // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = killed_halfway
        engine.state.max_epochs = 2
        engine.run([0])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    names = sorted(os.listdir(tmp_path))
    assert [n for n in names if n.endswith(".pt")] == ["checkpoint_epoch=1.pt"]
    partial = [n for n in names if PARTIAL_MARK in n]
    assert len(partial) == 1 and partial[0].startswith(".checkpoint_epoch=2.pt")  # hidden, not *.pt
    assert torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)["model"]["weight"].shape == (64, 64)
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=1.pt")
    # the next run's saver removes the leftover when attached
    _saver(tmp_path, torch.nn.Linear(64, 64)).attach(Engine(lambda e, b: None))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=1.pt"]


def test_saves_are_complete_zip_archives(tmp_path):
    model = torch.nn.Linear(2, 2)
    engine = _engine(model)
    _saver(tmp_path, model).attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(os.listdir(tmp_path)) == [f"checkpoint_epoch={i}.pt" for i in (1, 2, 3)]
    assert torch.load(tmp_path / "checkpoint_epoch=3.pt", weights_only=True)["model"]["weight"][0, 0] == model.weight[0, 0]


def _run(engine_epochs=1):
    engine = Engine(lambda e, b: None)
    return engine, (lambda: engine.run([0, 1], max_epochs=engine_epochs))


def test_final_model_saver_writes_final_weights_when_no_validation_ran(tmp_path):
    from scdl_monai.handlers.checkpoint import FinalModelSaver

    net = torch.nn.Linear(2, 3)
    validator = Engine(lambda e, b: None)  # never run
    trainer, run = _run()
    saver = FinalModelSaver(tmp_path / "models", net, validator=validator)
    saver.attach(trainer)
    run()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], net.weight)
    assert saver.saved == tmp_path / "models" / "model.pt"
    assert not list((tmp_path / "models").glob(f".*{PARTIAL_MARK}*"))


def test_final_model_saver_leaves_the_best_model_when_validation_ran(tmp_path):
    from scdl_monai.handlers.checkpoint import FinalModelSaver

    net = torch.nn.Linear(2, 3)
    validator = Engine(lambda e, b: None)
    validator.run([0])  # the key-metric saver owns model.pt
    (tmp_path / "model.pt").write_bytes(b"best")
    trainer, run = _run()
    FinalModelSaver(tmp_path, net, validator=validator).attach(trainer)
    run()
    assert (tmp_path / "model.pt").read_bytes() == b"best"
    # keep_existing: a resumed run without validation keeps the model selected earlier
    trainer, run = _run()
    FinalModelSaver(tmp_path, net, validator=Engine(lambda e, b: None), keep_existing=True).attach(trainer)
    run()
    assert (tmp_path / "model.pt").read_bytes() == b"best"
    with pytest.raises(TypeError, match="state_dict"):
        FinalModelSaver(tmp_path, object())
