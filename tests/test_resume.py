"""Resuming: 2 epochs + 2 resumed epochs give exactly the weights of 4 epochs straight.

The batch order is a function of (seed, epoch) and the learning rate of (schedule, epoch), so the
run continues exactly when the weights, the optimizer's state and step counter, the epoch and
the seed come back from the model file. Checked for every optimizer, with schedules, through
the Python API and through the command line.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

import gpunn
from gpunn import cli
from gpunn.optim import make_optimizer

OPTIMIZERS = {
    "sgd": {"lr": 0.3},
    "momentum": {"lr": 0.05, "momentum": 0.8, "weight_decay": 1e-3},
    "nesterov": {"lr": 0.05, "momentum": 0.9},
    "adam": {"lr": 0.01, "weight_decay": 1e-2},
}


def _data(n: int = 150, features: int = 6, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    y = (X[:, :classes] + 0.3 * rng.normal(size=(n, classes))).argmax(axis=1)
    return X, y


def _assert_same_weights(a: gpunn.Network, b: gpunn.Network) -> None:
    for (Wa, ba), (Wb, bb) in zip(a.get_params(), b.get_params(), strict=True):
        np.testing.assert_array_equal(Wa, Wb)
        np.testing.assert_array_equal(ba, bb)


def _new_net(seed: int = 3) -> gpunn.Network:
    return gpunn.Network([6, 8, 3], activation="tanh", output="softmax", loss="cross_entropy",
                         backend="numpy", seed=seed)


# ---------------------------------------------------------------------- Python API
@pytest.mark.parametrize("schedule", ["constant", "step", "cosine"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_python_resume_equals_straight_run(tmp_path, name, schedule):
    X, y = _data()
    settings = dict(OPTIMIZERS[name])
    lr = settings.pop("lr")
    sched = gpunn.optim.make_schedule(schedule, 4, step_size=1, gamma=0.5)
    fit_seed = 11

    straight = _new_net()
    straight.fit(X, y, epochs=4, batch_size=16, optimizer=make_optimizer(name, lr, **settings),
                 seed=fit_seed, schedule=sched, progress=False)

    first = _new_net()
    first.fit(X, y, epochs=2, batch_size=16, optimizer=make_optimizer(name, lr, **settings),
              seed=fit_seed, schedule=sched, total_epochs=4, progress=False)
    first.save(tmp_path / "half.npz", epoch=2, fit_seed=fit_seed)
    with pytest.raises(AssertionError):  # halfway really is somewhere else
        _assert_same_weights(first, straight)

    resumed = gpunn.load(tmp_path / "half.npz", backend="numpy")
    ckpt = resumed.checkpoint
    assert ckpt.epoch == 2 and ckpt.meta["fit_seed"] == fit_seed
    opt = ckpt.optimizer()
    opt.load_state_arrays(resumed.backend, ckpt.optimizer_state, resumed.dtype)
    assert opt.steps == 2 * 10  # 150 samples in batches of 16: 10 steps per epoch
    history = resumed.fit(X, y, epochs=2, batch_size=16, optimizer=opt,
                          seed=ckpt.meta["fit_seed"], schedule=sched, initial_epoch=ckpt.epoch,
                          total_epochs=4, progress=False)
    assert history["epoch"] == [3, 4]
    _assert_same_weights(resumed, straight)
    assert resumed.optimizer.steps == straight.optimizer.steps == 40


def test_python_resume_on_float64_with_a_lambda_schedule(tmp_path):
    X, y = _data(seed=1)

    def make():
        return gpunn.Network([6, 5, 3], output="softmax", loss="cross_entropy",
                             backend="numpy", dtype="float64", seed=0)

    def halve(epoch):
        return 0.5**epoch

    straight = make()
    straight.fit(X, y, epochs=4, batch_size=7, optimizer="adam", lr=0.02, schedule=halve,
                 progress=False)
    half = make()
    half.fit(X, y, epochs=2, batch_size=7, optimizer="adam", lr=0.02, schedule=halve,
             progress=False)
    half.save(tmp_path / "m.npz", epoch=2)
    net = gpunn.load(tmp_path / "m.npz", backend="numpy")
    opt = net.checkpoint.optimizer()
    opt.load_state_arrays(net.backend, net.checkpoint.optimizer_state, net.dtype)
    net.fit(X, y, epochs=2, batch_size=7, optimizer=opt, schedule=halve, initial_epoch=2,
            seed=net.checkpoint.meta["fit_seed"], progress=False)
    assert net.dtype == np.float64
    _assert_same_weights(net, straight)


# ---------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    X, y = _data(n=120, features=5, classes=3, seed=4)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, X=X * 10 + 3, y=y)  # unscaled: the CLI min-max scales it
    return str(path)


def _train(*flags: str) -> None:
    status = cli.main(["train", "--backend", "numpy", "--quiet", *flags])
    assert status == 0


def _weights(path) -> gpunn.Network:
    return gpunn.load(path, backend="numpy")


CLI_CASES = [
    ("sgd", ["--lr", "0.5", "--schedule", "step", "--step-size", "1", "--gamma", "0.7"]),
    ("momentum", ["--lr", "0.05", "--momentum", "0.8", "--weight-decay", "0.001"]),
    ("nesterov", ["--lr", "0.05", "--schedule", "cosine", "--schedule-epochs", "4"]),
    ("adam", ["--lr", "0.01", "--weight-decay", "0.01", "--schedule", "step", "--step-size",
              "2"]),
]


@pytest.mark.parametrize(("name", "flags"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_resume_equals_straight_run(tmp_path, npz_data, name, flags):
    common = ["--data", npz_data, "--hidden", "7", "--batch-size", "9", "--seed", "5",
              "--optimizer", name, *flags]
    straight, half, resumed = (str(tmp_path / f) for f in ("straight.npz", "half.npz", "r.npz"))
    _train(*common, "--epochs", "4", "--save", straight)
    _train(*common, "--epochs", "2", "--save", half)
    _train("--resume", half, "--epochs", "2", "--save", resumed)
    a, b = _weights(resumed), _weights(straight)
    _assert_same_weights(a, b)
    assert a.checkpoint.epoch == b.checkpoint.epoch == 4
    assert a.checkpoint.meta["optimizer"] == b.checkpoint.meta["optimizer"]
    np.testing.assert_array_equal(a.checkpoint.optimizer_state["steps"], 4 * 10)
    # the resumed file keeps the history of all four epochs
    history = a.checkpoint.meta["metadata"]["train"]["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["lr"] for r in history] == [
        r["lr"] for r in b.checkpoint.meta["metadata"]["train"]["history"]
    ]


@pytest.mark.parametrize("checkpoint_seconds, saved", [(0.0, 2), (3600.0, 1)])
def test_cli_interrupted_run_resumes_where_it_stopped(tmp_path, npz_data, monkeypatch, capsys,
                                                     checkpoint_seconds, saved):
    """Ctrl-C in epoch 3 of 4: the file holds the last epoch written (every epoch when writes
    are never held back; only the first when the next is an hour away), the message names
    it, and a plain --resume finishes the plan from there."""
    from gpunn.cli import train as cli_train

    monkeypatch.setattr(cli_train, "CHECKPOINT_SECONDS", checkpoint_seconds)
    monkeypatch.setattr(cli_train, "CHECKPOINT_SHARE", float("inf") if saved == 2 else 0.1)
    common = ["--data", npz_data, "--hidden", "6", "--optimizer", "adam", "--lr", "0.01",
              "--schedule", "cosine", "--epochs", "4"]
    straight, run = str(tmp_path / "straight.npz"), str(tmp_path / "run.npz")
    _train(*common, "--save", straight)

    real_run_epoch = gpunn.train.run_epoch

    def interrupted(net, Xd, Yd, opt, batch_size, shuffle, seed, epoch, comm=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_run_epoch(net, Xd, Yd, opt, batch_size, shuffle, seed, epoch, comm)

    monkeypatch.setattr(gpunn.train, "run_epoch", interrupted)
    capsys.readouterr()
    assert cli.main(["train", "--backend", "numpy", "--quiet", *common, "--save", run]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpunn: error: interrupted")
    assert f"after epoch {saved} is in" in err[0] and "--resume" in err[0]
    assert _weights(run).checkpoint.epoch == saved
    monkeypatch.setattr(gpunn.train, "run_epoch", real_run_epoch)

    _train("--resume", run, "--save", run)  # no --epochs: the planned epochs left
    _assert_same_weights(_weights(run), _weights(straight))
    assert _weights(run).checkpoint.epoch == 4


def test_cli_resume_refuses_changes_to_the_run(tmp_path, npz_data, capsys):
    path = str(tmp_path / "m.npz")
    _train("--data", npz_data, "--hidden", "4", "--epochs", "1", "--save", path)
    cases = [
        (["--hidden", "5"], "--hidden 5 differs"),
        (["--activation", "tanh"], "--activation tanh differs"),
        (["--optimizer", "adam"], "--optimizer adam differs"),
        (["--seed", "9"], "--seed 9 differs"),
        ([], "trained all 1 epoch(s)"),
    ]
    for flags, message in cases:
        capsys.readouterr()
        status = cli.main(["train", "--backend", "numpy", "--resume", path, *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2, flags
        assert len(err) == 1 and message in err[0], err
    # repeating the original flags is fine
    _train("--resume", path, "--hidden", "4", "--seed", "0", "--epochs", "1")


def test_resume_through_the_console_script(tmp_path, npz_data):
    """The same 2 + 2 = 4 check, run as a user runs it."""
    common = ["--data", npz_data, "--hidden", "5", "--optimizer", "momentum", "--lr", "0.1",
              "--backend", "numpy", "--quiet"]
    straight, half = str(tmp_path / "s.npz"), str(tmp_path / "h.npz")

    def run(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "gpunn", "train", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    run(*common, "--epochs", "4", "--save", straight)
    run(*common, "--epochs", "2", "--save", half)
    run("--resume", half, "--epochs", "2", "--save", half, "--backend", "numpy", "--quiet")
    _assert_same_weights(_weights(half), _weights(straight))


# ---------------------------------------------------------------------- damaged metadata
def _with_metadata(source, target, change) -> str:
    """A copy of the model file ``source`` whose gpunn_train metadata ``change`` edited."""
    import json
    import zipfile

    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    meta = json.loads(np.load(source)["gpunn_meta"].tobytes())
    change(meta["metadata"])
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    members["gpunn_meta.npy"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(target)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, npz_data):
    path = str(tmp_path_factory.mktemp("model") / "m.npz")
    _train("--data", npz_data, "--hidden", "4", "--epochs", "1", "--save", path)
    return path


def _set(field: str, value):
    def change(metadata):
        *parents, last = field.split(".")
        for key in parents:
            metadata = metadata[key]
        metadata[last] = value

    return change


DAMAGED = [
    ("split_seed", "abc"),
    ("split_seed", -5),
    ("val_fraction", "a tenth"),
    ("data", 7),
    ("train.planned_epochs", "x"),
    ("train.planned_epochs", 10**9),
    ("train.history", 5),
    ("train.history", [{"epoch": 1}]),
    ("train.batch_size", 0),
    ("train.schedule.name", "warp"),
    ("train", "x"),
]


@pytest.mark.parametrize(("field", "value"), DAMAGED, ids=[f"{f}={v!r}" for f, v in DAMAGED])
def test_resume_refuses_damaged_metadata_by_name(tmp_path, trained, capsys, field, value):
    path = _with_metadata(trained, tmp_path / "bad.npz", _set(field, value))
    capsys.readouterr()
    more = [] if field == "train.planned_epochs" else ["--epochs", "1"]  # else it is read
    status = cli.main(["train", "--backend", "numpy", "--quiet", "--resume", path, *more])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1, err
    assert len(err) == 1 and field in err[0] and "bug" not in err[0], err


EVALUATED = [item for item in DAMAGED if not item[0].startswith("train")]


@pytest.mark.parametrize(("field", "value"), EVALUATED, ids=[f"{f}={v!r}" for f, v in EVALUATED])
def test_evaluate_refuses_damaged_metadata_by_name(tmp_path, trained, capsys, field, value):
    path = _with_metadata(trained, tmp_path / "bad.npz", _set(field, value))
    capsys.readouterr()
    status = cli.main(["evaluate", path, "--backend", "numpy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1, err
    assert len(err) == 1 and field in err[0] and "bug" not in err[0], err


def test_a_huge_planned_run_asks_for_epochs_and_a_flag_replaces_it(tmp_path, trained, capsys):
    path = _with_metadata(trained, tmp_path / "bad.npz", _set("train.planned_epochs", 10**9))
    capsys.readouterr()
    assert cli.main(["train", "--backend", "numpy", "--quiet", "--resume", path]) == 1
    assert "--epochs" in capsys.readouterr().err
    _train("--resume", path, "--epochs", "1", "--save", str(tmp_path / "more.npz"))
    assert _weights(tmp_path / "more.npz").checkpoint.epoch == 2
