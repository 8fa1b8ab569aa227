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
    rows = list(csv.reader(out.read_text().splitlines()))
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


def test_distributed_without_mpi4py_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert cli.main(["train", "--distributed", "mpi", "--backend", "numpy"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MPI engine is not available" in err[0] and "gpunn[mpi]" in err[0]


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



# ---------------------------------------------------------------------- output files
def _error_of_refused_train(capsys, *flags: str) -> str:
    """Run gpunn train with ``flags``; check that it was refused before any training and
    return its one error line."""
    status = cli.main(["train", "--data", "iris", "--epochs", "1", "--backend", "numpy", *flags])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.out == ""  # nothing trained, nothing printed
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpunn: error: ")
    return lines[0]


def test_train_refuses_one_file_for_two_outputs(tmp_path, capsys):
    same = str(tmp_path / "same.out")
    error = _error_of_refused_train(capsys, "--save", same, "--metrics", same)
    assert "--save and --metrics" in error and "own path" in error
    assert not (tmp_path / "same.out").exists()


def test_train_refuses_an_output_linked_to_another(tmp_path, capsys):
    (tmp_path / "model.npz").write_bytes(b"an earlier model")
    (tmp_path / "link.json").symlink_to(tmp_path / "model.npz")
    error = _error_of_refused_train(capsys, "--save", str(tmp_path / "model.npz"),
                                    "--metrics", str(tmp_path / "link.json"))
    assert "--save and --metrics" in error
    assert (tmp_path / "model.npz").read_bytes() == b"an earlier model"


def test_train_refuses_to_write_over_its_data(tmp_path, capsys):
    data = tmp_path / "run.npz"
    X = np.random.default_rng(0).normal(size=(40, 3))
    np.savez(data, X=X, y=(X[:, 0] > 0).astype(int))
    before = data.read_bytes()
    error = _error_of_refused_train(capsys, "--data", str(data), "--save", str(data))
    assert "--save" in error and "is also --data" in error and "another path" in error
    assert data.read_bytes() == before


def test_a_resumed_run_refuses_to_write_over_the_data_its_model_names(tmp_path, capsys):
    data, model = tmp_path / "run.npz", tmp_path / "m.npz"
    X = np.random.default_rng(0).normal(size=(40, 3))
    np.savez(data, X=X, y=(X[:, 0] > 0).astype(int))
    before = data.read_bytes()
    assert cli.main(["train", "--data", str(data), "--epochs", "1", "--backend", "numpy",
                     "--save", str(model), "--quiet"]) == 0
    capsys.readouterr()
    status = cli.main(["train", "--resume", str(model), "--epochs", "1", "--save", str(data)])
    err = capsys.readouterr().err
    assert status == 2 and f"is also the data file that {model} names" in err
    assert data.read_bytes() == before


def test_a_saved_run_longer_than_a_model_file_records_is_refused_before_training(
    tmp_path, capsys
):
    from gpunn.cli.train_settings import MAX_STORED_EPOCHS

    error = _error_of_refused_train(capsys, "--epochs", str(MAX_STORED_EPOCHS + 1),
                                    "--save", str(tmp_path / "m.npz"))
    assert "at most 100,000 epochs" in error and not (tmp_path / "m.npz").exists()


def test_an_output_link_to_a_missing_folder_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "gone" / "m.npz")
    error = _error_of_refused_train(capsys, "--save", str(tmp_path / "dangling.npz"))
    assert "gone does not exist" in error


def test_train_refuses_to_write_metrics_over_the_resumed_model(tmp_path, capsys):
    model = tmp_path / "m.npz"
    gpunn.Network([4, 3], output="softmax", loss="cross_entropy", backend="numpy").save(model)
    error = _error_of_refused_train(capsys, "--resume", str(model), "--metrics", str(model))
    assert "--metrics" in error and "is also --resume" in error


def test_output_files_may_replace_an_input_only_where_allowed(tmp_path):
    from gpunn.cli.parsing import UsageError, check_output_files

    model = tmp_path / "model.npz"
    model.write_bytes(b"a model")
    os.link(model, tmp_path / "hard-link.npz")
    inputs = {"MODEL": str(model), "INPUT": str(tmp_path / "in.csv")}
    for out in (model, tmp_path / "hard-link.npz", tmp_path / ".." / tmp_path.name / "model.npz"):
        with pytest.raises(UsageError, match="is also MODEL"):
            check_output_files({"--out": str(out)}, inputs)
    written = check_output_files({"--save": str(model), "--plot": None}, {"--resume": str(model)},
                                 rewrites=[("--save", "--resume")])
    assert written == {"--save": model, "--plot": None}


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("a" * 300 + ".npz", "no file can be written there"),
     ("missing/m.npz", "does not exist"),
     (".", "is a directory")],
    ids=["name-too-long", "no-folder", "a-folder"],
)
def test_train_refuses_an_unwritable_save_before_training(tmp_path, capsys, name, fragment):
    error = _error_of_refused_train(capsys, "--save", str(tmp_path / name))
    assert error.startswith("gpunn: error: --save ") and fragment in error


def test_train_refuses_a_save_in_a_read_only_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user, not root
    error = _error_of_refused_train(capsys, "--save", str(tmp_path / "m.npz"))
    assert "not writable" in error


# ---------------------------------------------------------------------- bench flags
@pytest.mark.parametrize(
    ("flag", "value"),
    [("--batch-sizes", "-5"), ("--batch-sizes", "4-2"), ("--seed", "-1"), ("--repeats", "0"),
     ("--time-budget", "-1"), ("--time-budget", "nan"), ("--configs", "nope"),
     ("--backends", "tpu")],
)
def test_bench_refuses_bad_values_naming_the_flag(flag, value, monkeypatch, capsys):
    import gpunn.bench

    def must_not_run(**kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(gpunn.bench, "run_bench", must_not_run)
    assert cli.main(["bench", flag, value]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpunn: error: argument {flag}: ")


# ---------------------------------------------------------------------- predict's inputs
@pytest.fixture()
def four_inputs(tmp_path):
    """A model taking 4 features (no stored scaler), and a way to run predict in process."""
    net = gpunn.Network([4, 3], output="softmax", loss="cross_entropy", backend="numpy", seed=1)
    model = tmp_path / "m.npz"
    net.save(model)

    def predict(inputs, capsys):
        out = tmp_path / "p.csv"
        out.unlink(missing_ok=True)
        status = cli.main(["predict", str(model), str(inputs), "--out", str(out),
                           "--backend", "numpy"])
        err = capsys.readouterr().err.strip().splitlines()
        return status, (out.read_text() if out.exists() else None), err

    return net, predict


SAMPLES = np.array([[0.5, 1.0, -2.0, 3.0], [1.5, 0.0, 0.25, -1.0], [2.0, 2.0, 2.0, 2.0]])


def test_predict_reads_what_train_reads(four_inputs, tmp_path, capsys):
    import gzip

    net, predict = four_inputs
    plain = tmp_path / "plain.csv"
    np.savetxt(plain, SAMPLES, delimiter=",")
    status, expected, err = predict(plain, capsys)
    assert status == 0, err
    rows = [r.split(",") for r in expected.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == net.predict(SAMPLES).argmax(axis=1).tolist()
    lines = [",".join(repr(v) for v in row) for row in SAMPLES.tolist()]
    variants = {
        "x.npy": lambda p: np.save(p, SAMPLES),
        "x.npz": lambda p: np.savez(p, X=SAMPLES),
        "semicolon.csv": lambda p: p.write_text("\n".join(x.replace(",", ";") for x in lines)),
        "tabs.csv": lambda p: p.write_text("\n".join(x.replace(",", "\t") for x in lines)),
        "quoted.csv": lambda p: p.write_text(
            "\n".join(",".join(f'"{v!r}"' for v in row) for row in SAMPLES.tolist())),
        "bom.csv": lambda p: p.write_bytes(("a,b,c,d\n" + "\n".join(lines)).encode("utf-8-sig")),
        "comments.csv": lambda p: p.write_text("# samples\n" + "\n".join(lines) + "\n"),
        "x.csv.gz": lambda p: p.write_bytes(gzip.compress("\n".join(lines).encode())),
    }
    for name, write in variants.items():
        write(tmp_path / name)
        status, text, err = predict(tmp_path / name, capsys)
        assert status == 0, (name, err)
        assert text == expected, name


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("0.5,,-2,3\n1.5,0,0.25,-1\n", ["line 1, column 2", "empty cell"]),
        ("a,b,c,d\n1,2,3,4\n1_000,2,3,4\n", ["line 3, column 1", "'1_000'"]),
        ("1e300,1,2,3\n", ["1e+300", "beyond the range of float32"]),
        ("1,2,3,4,0\n", ["5 features", "label column"]),
    ],
)
def test_predict_csv_errors_are_precise(four_inputs, tmp_path, capsys, content, fragments):
    _, predict = four_inputs
    p = tmp_path / "x.csv"
    p.write_text(content)
    status, text, err = predict(p, capsys)
    assert status == 1 and text is None
    assert len(err) == 1 and err[0].startswith("gpunn: error: "), err
    assert "unexpected" not in err[0]
    for fragment in fragments:
        assert fragment in err[0]


@pytest.mark.parametrize(
    ("name", "make", "fragments"),
    [
        ("x.npz", lambda p: np.savez(p, X=np.ones(4)), ["1-D", "reshape(1, -1)"]),
        ("x.npz", lambda p: (np.savez(p, X=np.ones((40, 4))),
                             p.write_bytes(p.read_bytes()[:-30])), ["not a readable NumPy"]),
        ("x.npy", lambda p: (np.save(p, np.ones((40, 4))),
                             p.write_bytes(p.read_bytes()[:-30])), ["not a readable NumPy"]),
        ("x.csv", lambda p: p.write_bytes("größe\n1,2,3,4\n".encode("latin-1")), ["UTF-8"]),
    ],
)
def test_predict_bad_input_files_are_one_line_data_errors(four_inputs, tmp_path, capsys, name,
                                                          make, fragments):
    _, predict = four_inputs
    make(tmp_path / name)
    status, text, err = predict(tmp_path / name, capsys)
    assert status == 1 and text is None
    assert len(err) == 1 and "unexpected" not in err[0], err
    for fragment in fragments:
        assert fragment in err[0]


def test_the_command_line_reference_is_up_to_date() -> None:
    """docs/cli.md is generated from the parser: a flag added or changed without running
    scripts/cli_reference.py fails here."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "cli_reference.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    page = (script.parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    parser = cli.build_parser("bench")
    commands = next(a for a in parser._actions if a.dest == "command")
    for name, sub in commands.choices.items():
        assert f"## gpunn {name}" in page
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in page, (name, flag)


def test_save_writes_the_last_epoch_once(tmp_path, monkeypatch, capsys):
    """Checkpoints come after the first epoch and when due; the last epoch is written once,
    by the final save that follows early stopping's restore."""
    written = []
    save = gpunn.Network.save

    def counting_save(net, path, **extra):
        written.append(extra["epoch"])
        save(net, path, **extra)

    monkeypatch.setattr(gpunn.Network, "save", counting_save)
    for epochs in ("1", "3"):
        written.clear()
        assert cli.main(["train", "--data", "iris", "--backend", "numpy", "--epochs", epochs,
                         "--quiet", "--save", str(tmp_path / f"m{epochs}.npz")]) == 0
        assert written.count(int(epochs)) == 1 and written[0] == 1
