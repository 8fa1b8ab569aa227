"""The ``gpunn`` command line, invoked as a user invokes it: ``python -m gpunn ...`` and the
installed ``gpunn`` console script."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunn
from gpunn import cli
from gpunn.data import MinMaxScaler

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENV = {**os.environ, "GPUNN_BACKEND": "numpy", "PYTHONWARNINGS": "ignore"}


def gpunn_cmd(*args: str, script: str | None = None, timeout: float = 180):
    command = [script] if script else [sys.executable, "-m", "gpunn"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def assert_one_line_error(done, *fragments: str, status: int | None = None) -> str:
    assert done.returncode != 0
    if status is not None:
        assert done.returncode == status
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gpunn: error: ")
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small training run on scikit-learn's digits with every output flag."""
    folder = tmp_path_factory.mktemp("run")
    paths = {name: folder / name for name in ("model.npz", "metrics.json", "curve.png")}
    done = gpunn_cmd("train", "--data", "digits", "--epochs", "2", "--hidden", "16",
                     "--save", str(paths["model.npz"]), "--metrics", str(paths["metrics.json"]),
                     "--plot", str(paths["curve.png"]))
    return done, paths


def test_train_prints_progress_and_the_test_accuracy(trained):
    done, _ = trained
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith("training 64-16-10 (relu/softmax/cross_entropy) on digits")
    epochs = [line for line in out if line.startswith("epoch ")]
    assert len(epochs) == 2
    assert "val_acc" in epochs[0] and "samples/s" in epochs[0]
    test_line = next(line for line in out if line.startswith("test accuracy"))
    assert float(test_line.split()[2]) > 0.5
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal


def test_train_writes_model_metrics_and_plot(trained):
    done, paths = trained
    assert done.returncode == 0, done.stderr
    metrics = json.loads(paths["metrics.json"].read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    assert all(r["loss"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in metrics["epochs"])
    assert metrics["dataset"] == "digits" and metrics["network"]["sizes"] == [64, 16, 10]
    printed = next(line for line in done.stdout.splitlines() if line.startswith("test accuracy"))
    assert f"{metrics['test']['accuracy']:.4f}" in printed
    assert paths["curve.png"].read_bytes().startswith(PNG_SIGNATURE)
    net = gpunn.load(paths["model.npz"], backend="numpy")
    assert net.sizes == (64, 16, 10)
    assert net.checkpoint.epoch == 2
    assert set(net.checkpoint.arrays) >= {"scaler_min", "scaler_max"}
    assert net.checkpoint.meta["metadata"]["dataset"] == "digits"
    assert not list(paths["model.npz"].parent.glob("*.tmp"))  # atomic writes left no debris


def test_evaluate_reports_the_held_out_accuracy(trained):
    train_done, paths = trained
    done = gpunn_cmd("evaluate", str(paths["model.npz"]))
    assert done.returncode == 0, done.stderr
    accuracy = next(line for line in done.stdout.splitlines() if line.startswith("accuracy"))
    test_line = next(line for line in train_done.stdout.splitlines()
                     if line.startswith("test accuracy"))
    assert accuracy.split()[1] == test_line.split()[2]  # same split, same scaler
    assert "loss" in done.stdout


def test_predict_writes_classes_and_probabilities(trained, tmp_path):
    _, paths = trained
    rng = np.random.default_rng(0)
    X = rng.integers(0, 17, size=(12, 64)).astype(float)  # raw digits-like pixels 0..16
    inputs = tmp_path / "x.csv"
    np.savetxt(inputs, X, delimiter=",", header=",".join(f"f{i}" for i in range(64)),
               comments="")
    out = tmp_path / "pred.csv"
    done = gpunn_cmd("predict", str(paths["model.npz"]), str(inputs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["prediction", *(f"p{k}" for k in range(10))]
    assert len(rows) == 13
    probabilities = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    predicted = [int(r[0]) for r in rows[1:]]
    assert predicted == probabilities.argmax(axis=1).tolist()
    # the same as the Python API with the stored scaler
    net = gpunn.load(paths["model.npz"], backend="numpy")
    scaled = MinMaxScaler.from_arrays(net.checkpoint.arrays).transform(X)
    assert predicted == net.predict(scaled.astype(np.float32)).argmax(axis=1).tolist()
    # an .npz input gives the same predictions
    np.savez(tmp_path / "x.npz", X=X)
    done = gpunn_cmd("predict", str(paths["model.npz"]), str(tmp_path / "x.npz"), "--out",
                     str(tmp_path / "p2.csv"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p2.csv").read_text() == out.read_text()


def test_info_prints_versions_and_backends():
    done = gpunn_cmd("info")
    assert done.returncode == 0, done.stderr
    assert "numpy" in done.stdout and "backends" in done.stdout
    assert gpunn.__version__ in done.stdout


def test_every_command_has_help_with_examples():
    for command in ("train", "evaluate", "predict", "info"):
        done = gpunn_cmd(command, "--help") if command == "train" else None
        text = done.stdout if done else _help_in_process(command)
        assert f"usage: gpunn {command}" in text
        assert "examples:" in text
    done = gpunn_cmd("bench", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: gpunn bench" in done.stdout and "examples:" in done.stdout
    assert "--configs" in done.stdout  # the benchmark's own flags
    done = gpunn_cmd("--help")
    assert done.returncode == 0 and "examples:" in done.stdout
    for command in ("train", "evaluate", "predict", "bench", "info"):
        assert command in done.stdout


def _help_in_process(command: str) -> str:
    parser = cli.build_parser(command)
    sub = parser._subparsers._group_actions[0].choices[command]
    return sub.format_help()


def test_the_installed_console_script(tmp_path):
    script = shutil.which("gpunn")
    if script is None:
        pytest.skip("the gpunn console script is not installed (pip install -e .)")
    done = gpunn_cmd("--version", script=script)
    assert done.returncode == 0 and gpunn.__version__ in done.stdout
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 4))
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    done = gpunn_cmd("train", "--data", str(tmp_path / "d.npz"), "--epochs", "2", "--hidden",
                     "3", "--save", str(tmp_path / "m.npz"), script=script)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and (tmp_path / "m.npz").is_file()
    assert_one_line_error(gpunn_cmd("evaluate", str(tmp_path / "nope.npz"), script=script),
                          "nope.npz")


# ---------------------------------------------------------------------- user mistakes
@pytest.mark.parametrize(
    ("args", "fragments", "status"),
    [
        (["train", "--data", "missing.npz"], ["missing.npz"], 1),
        (["train", "--hidden", "100,x"], ["--hidden", "100,x"], 2),
        (["train", "--lr", "abc"], ["--lr", "abc"], 2),
        (["frobnicate"], ["frobnicate"], 2),
    ],
    ids=["missing-file", "bad-hidden", "bad-lr", "unknown-command"],
)
def test_user_mistakes_end_in_one_line(args, fragments, status):
    assert_one_line_error(gpunn_cmd(*args), *fragments, status=status)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--lr", "-1"], ["--lr"]),
        (["train", "--lr", "0"], ["--lr", "greater than 0"]),
        (["train", "--lr", "nan"], ["--lr"]),
        (["train", "--hidden", "0"], ["--hidden"]),
        (["train", "--epochs", "2.5"], ["--epochs"]),
        (["train", "--activation", "swish"], ["--activation", "swish"]),
        (["train", "--data", "no_such_dataset"], ["no_such_dataset"]),
        (["train", "--momentum", "0.5"], ["--momentum", "sgd"]),
        (["train", "--optimizer", "momentum", "--momentum", "1.5"], ["momentum", "[0, 1)"]),
        (["train", "--step-size", "3"], ["--step-size", "step"]),
        (["train", "--loss", "cross_entropy", "--output", "identity"], ["cross_entropy"]),
        (["train", "--val-fraction", "0", "--early-stopping", "2"], ["--early-stopping"]),
        (["train", "--save", "/no/such/folder/m.npz"], ["/no/such/folder"]),
        (["train", "--resume", "nothing.npz"], ["nothing.npz"]),
        (["evaluate", "nothing.npz"], ["nothing.npz"]),
        (["predict", "nothing.npz", "x.csv"], ["--out"]),
        ([], ["COMMAND"]),
    ],
)
def test_more_mistakes_in_process(args, fragments, capsys):
    status = cli.main(args)
    captured = capsys.readouterr()
    assert status != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("gpunn: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_model_and_input_files(tmp_path, capsys):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    assert cli.main(["evaluate", str(tmp_path / "junk.npz"), "--data", "iris"]) == 1
    assert "junk.npz" in capsys.readouterr().err
    net = gpunn.Network([4, 3], output="softmax", loss="cross_entropy", backend="numpy")
    net.save(tmp_path / "m.npz")
    np.savetxt(tmp_path / "wide.csv", np.ones((3, 5)), delimiter=",")
    status = cli.main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "wide.csv"),
                       "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert "5 features" in err[0] and "label column" in err[0]
    assert not (tmp_path / "p.csv").exists()


def test_debug_shows_the_traceback(capsys):
    assert cli.main(["train", "--data", "missing.npz", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("gpunn: error:")


def test_an_unexpected_error_is_one_line_too(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli.info, "run_info", broken)
    assert cli.main(["info"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: boom" in err[0] and "--debug" in err[0]


def test_tf32_flag_is_harmless_without_a_gpu(monkeypatch, capsys):
    """--tf32 concerns GPU matrix products: on NumPy it changes nothing, and it leaves no
    trace in the environment (tests/test_gpu.py checks it on the GPU)."""
    monkeypatch.delenv("GPUNN_TF32", raising=False)
    args = ["train", "--data", "iris", "--epochs", "1", "--backend", "numpy", "--quiet", "--tf32"]
    assert cli.main(args) == 0
    assert "GPUNN_TF32" not in os.environ
    assert "test accuracy" in capsys.readouterr().out


def test_evaluate_and_predict_in_process_on_npz_data(tmp_path, capsys):
    """Early stopping, the sigmoid/mse network of the article, evaluate --split all."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3)) * 50
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    model = str(tmp_path / "m.npz")
    status = cli.main(["train", "--data", str(tmp_path / "d.npz"), "--backend", "numpy",
                       "--hidden", "8", "--activation", "sigmoid", "--output", "sigmoid",
                       "--loss", "mse", "--lr", "3.0", "--epochs", "40", "--early-stopping",
                       "2", "--save", model, "--metrics", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    assert status == 0
    assert "test accuracy" in out
    epochs = json.loads((tmp_path / "m.json").read_text())["epochs"]
    assert len(epochs) == gpunn.load(model, backend="numpy").checkpoint.epoch
    assert cli.main(["evaluate", model, "--data", str(tmp_path / "d.npz"), "--split", "all",
                     "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "all part, 200 samples" in out
    assert float(out.split("accuracy")[1].split()[0]) > 0.8
    assert Path(model).is_file()


# ---------------------------------------------------------------------- --distributed
def _mpi4py_available() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def test_distributed_without_the_module_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.delattr(gpunn, "distributed", raising=False)
    monkeypatch.setitem(sys.modules, "gpunn.distributed", None)
    assert cli.main(["train", "--distributed", "mpi", "--backend", "numpy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--distributed is not available" in err[0]


@pytest.mark.skipif(not _mpi4py_available(), reason="needs mpi4py (gpunn[mpi])")
def test_distributed_without_a_launcher_trains_as_one_process(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 3))
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    status = cli.main(["train", "--distributed", "mpi", "--backend", "numpy", "--data",
                       str(tmp_path / "d.npz"), "--hidden", "3", "--epochs", "1"])
    captured = capsys.readouterr()
    assert status == 0
    assert "test accuracy" in captured.out
    assert "no MPI launcher" in captured.err


@pytest.mark.skipif(shutil.which("mpiexec") is None or not _mpi4py_available(),
                    reason="needs mpiexec and mpi4py (gpunn[mpi])")
def test_distributed_two_ranks_match_one_process(tmp_path):
    """mpiexec -n 2: only rank 0 prints and writes; the weights match one process's (up to
    the rounding of the gradient sums)."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 8))
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, :3]).argmax(axis=1))
    flags = ["train", "--data", str(tmp_path / "d.npz"), "--hidden", "16", "--epochs", "2",
             "--batch-size", "32", "--backend", "numpy"]
    done = subprocess.run(
        ["mpiexec", "-n", "2", sys.executable, "-m", "gpunn", *flags, "--distributed", "mpi",
         "--save", str(tmp_path / "two.npz")],
        capture_output=True, text=True, timeout=180, env=ENV,
    )
    if done.returncode != 0 and "differ" in done.stderr and "mpiexec" in done.stderr:
        pytest.skip(f"mpiexec on PATH does not match mpi4py: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test accuracy") == 1
    assert "2 ranks" in done.stdout
    single = gpunn_cmd(*flags, "--save", str(tmp_path / "one.npz"))
    assert single.returncode == 0, single.stderr
    two, one = (gpunn.load(tmp_path / f, backend="numpy") for f in ("two.npz", "one.npz"))
    for (W2, b2), (W1, b1) in zip(two.get_params(), one.get_params(), strict=True):
        np.testing.assert_allclose(W2, W1, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b2, b1, rtol=1e-4, atol=1e-5)


def test_info_falls_back_without_the_bench_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gpunn.bench.sysinfo", None)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"gpunn      {gpunn.__version__}" in out
    assert f"numpy      {np.__version__}" in out and "backends" in out
