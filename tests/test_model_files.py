"""Model files: exact round trips, atomic writes, and refusal of corrupt or hostile files."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpunn
from gpunn import files as gfiles
from gpunn import io as gio
from gpunn.errors import (
    DataError,
    GpunnError,
    InputError,
    InputTypeError,
    ModelFileError,
    OutputFileError,
)

ROOT = Path(__file__).resolve().parents[1]


def make_net(dtype="float32", seed=0, **kw):
    kw.setdefault("activation", "tanh")
    return gpunn.Network([4, 5, 3], backend="numpy", dtype=dtype, seed=seed, **kw)


def same_params(a, b):
    pa, pb = a.get_params(), b.get_params()
    return len(pa) == len(pb) and all(
        W1.dtype == W2.dtype and np.array_equal(W1, W2) and np.array_equal(b1, b2)
        for (W1, b1), (W2, b2) in zip(pa, pb, strict=False)
    )


def npy_bytes(array=None, *, header: str | None = None, data: bytes = b"") -> bytes:
    """A .npy member: a real array, or a hand-written header followed by raw ``data``."""
    if header is None:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=True)
        return buffer.getvalue()
    text = header + " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1") + data


def write_npz(path, members: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for key, value in members.items():
            payload = value if isinstance(value, bytes) else npy_bytes(value)
            archive.writestr(key + ".npy", payload)
    return path


def members_of(net) -> dict:
    """The members a valid model file of ``net`` holds, for tests to tamper with."""
    meta = {
        "format_version": gio.FORMAT_VERSION,
        "gpunn_version": gpunn.__version__,
        "config": net.config(),
        "backend": "numpy",
        "epoch": 0,
        "fit_seed": 0,
        "optimizer": None,
        "metadata": {},
    }
    members = {gio.META_KEY: meta_array(meta)}
    for layer, (W, b) in enumerate(net.get_params()):
        members[f"W{layer}"], members[f"b{layer}"] = W, b
    return members


def meta_array(meta) -> np.ndarray:
    text = meta if isinstance(meta, str) else json.dumps(meta)
    return np.frombuffer(text.encode(), dtype=np.uint8)


def meta_of(net) -> dict:
    return json.loads(members_of(net)[gio.META_KEY].tobytes())


def refused(path, *fragments):
    with pytest.raises(ModelFileError) as info:
        gpunn.load(path, backend="numpy")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_exact(tmp_path, dtype):
    net = make_net(dtype, seed=3, output="softmax", loss="cross_entropy")
    rng = np.random.default_rng(0)
    net.fit(rng.normal(size=(30, 4)), rng.integers(0, 3, 30), epochs=2, batch_size=8,
            optimizer="momentum", lr=0.05, progress=False)
    path = tmp_path / "model.npz"
    net.save(path, epoch=2, arrays={"scale": np.arange(4.0)}, metadata={"note": "x"})
    loaded = gpunn.load(path, backend="numpy")
    assert loaded.backend.name == "numpy"
    assert loaded.config() == net.config()
    assert same_params(net, loaded)
    assert loaded.get_params()[0][0].dtype == np.dtype(dtype)
    X = rng.normal(size=(7, 4))
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
    assert loaded.checkpoint.epoch == 2
    np.testing.assert_array_equal(loaded.checkpoint.arrays["scale"], np.arange(4.0))
    assert loaded.checkpoint.meta["metadata"] == {"note": "x"}
    assert loaded.checkpoint.optimizer().config() == net.optimizer.config()
    state = loaded.checkpoint.optimizer_state
    saved = net.optimizer.state_arrays(net.backend)
    np.testing.assert_array_equal(state["velocity"], saved["velocity"])
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_save_overwrites_and_keeps_permissions_readable(tmp_path):
    path = tmp_path / "model.npz"
    make_net(seed=1).save(path)
    second = make_net(seed=2)
    second.save(path)
    assert same_params(gpunn.load(path, backend="numpy"), second)
    assert os.stat(path).st_mode & 0o444 == 0o444 & ~_umask()
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ atomic writes
def test_failing_writer_leaves_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = make_net(seed=1)
    old.save(path)
    before = path.read_bytes()

    def broken_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gio.numpy, "savez", broken_savez)
    with pytest.raises(ModelFileError, match="No space left"):
        make_net(seed=2).save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    monkeypatch.undo()
    assert same_params(gpunn.load(path, backend="numpy"), old)


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-temp", "named-temp"])
def test_interrupt_during_write_cleans_up(tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.setattr(gfiles, "_open_unnamed", lambda directory: None)
    path = tmp_path / "model.npz"
    path.write_bytes(b"previous")

    def interrupted(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gfiles.atomic_write(path, interrupted)
    assert path.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy
    import gpunn
    from gpunn import files
    if sys.argv[2] == "named":
        files._open_unnamed = lambda directory: None
    def slow_savez(handle, **arrays):
        handle.write(b"PK\\x03\\x04" + b"x" * 100000)
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
    numpy.savez = slow_savez
    gpunn.Network([4, 5, 3], backend="numpy", seed=2).save(sys.argv[1])
    """
)


@pytest.mark.parametrize("mode", ["unnamed", "named"])
def test_killed_save_leaves_previous_file_intact(tmp_path, mode):
    path = tmp_path / "model.npz"
    old = make_net(seed=1)
    old.save(path)
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(path), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == b"writing", child.stderr.read().decode()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert same_params(gpunn.load(path, backend="numpy"), old)
    left = sorted(os.listdir(tmp_path))
    if mode == "named":
        assert len(left) == 2 and left[0].endswith(".tmp"), left  # the dead writer's file
    else:
        probe = gfiles._open_unnamed(tmp_path)
        if probe is not None:
            os.close(probe)
            assert left == ["model.npz"]  # the unnamed file vanished with the process
    # a named temporary file of the dead process is removed by the next save
    make_net(seed=3).save(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    assert same_params(gpunn.load(path, backend="numpy"), make_net(seed=3))


def test_temporary_files_of_live_processes_are_kept(tmp_path):
    mine = tmp_path / f".model.npz.{os.getppid()}.0123abcd.tmp"
    mine.write_bytes(b"in progress elsewhere")
    make_net().save(tmp_path / "model.npz")
    assert mine.exists()


def test_save_to_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        make_net().save(tmp_path / "nowhere" / "model.npz")
    with pytest.raises(ModelFileError, match="is a folder"):
        make_net().save(tmp_path)
    with pytest.raises(InputTypeError, match="file path"):
        make_net().save(None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-temp", "named-temp"])
def test_saving_over_a_private_file_keeps_it_private(tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.setattr(gfiles, "_open_unnamed", lambda directory: None)
    path = tmp_path / "model.npz"
    make_net(seed=1).save(path)
    os.chmod(path, 0o600)
    make_net(seed=2).save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    os.chmod(path, 0o640)
    make_net(seed=3).save(path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert same_params(gpunn.load(path, backend="numpy"), make_net(seed=3))


@pytest.mark.parametrize("relative", [True, False], ids=["relative-link", "absolute-link"])
def test_saving_over_a_link_writes_through_to_its_target(tmp_path, relative):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "model.npz"
    make_net(seed=1).save(real)
    link = tmp_path / "latest.npz"
    link.symlink_to(os.path.join("store", "model.npz") if relative else real)
    make_net(seed=2).save(link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert same_params(gpunn.load(real, backend="numpy"), make_net(seed=2))
    assert sorted(os.listdir(tmp_path / "store")) == ["model.npz"]


def test_each_writer_names_its_own_kind_of_file(tmp_path):
    from gpunn.bench import report
    from gpunn.cli.output import write_text
    from gpunn.data import write_idx

    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist"):
        write_idx(missing / "labels.idx", np.zeros(3, np.uint8))
    for write in (lambda: write_text(missing / "metrics.json", "{}"),
                  lambda: report.write_json({}, tmp_path)):
        with pytest.raises(OutputFileError) as info:
            write()
        assert not isinstance(info.value, (ModelFileError, DataError))
    assert os.listdir(tmp_path) == []


def test_data_files_are_written_like_model_files(tmp_path):
    from gpunn.data import write_idx

    fresh = tmp_path / "fresh.idx"
    write_idx(fresh, np.zeros(3, np.uint8))
    assert os.stat(fresh).st_mode & 0o777 == 0o666 & ~_umask()
    real = tmp_path / "real.idx"
    real.write_bytes(b"old")
    os.chmod(real, 0o600)
    link = tmp_path / "link.idx"
    link.symlink_to(real)
    write_idx(link, np.arange(3, dtype=np.uint8))
    assert link.is_symlink() and os.stat(real).st_mode & 0o777 == 0o600
    assert real.read_bytes()[-3:] == bytes([0, 1, 2])


@pytest.mark.parametrize(
    "extra, error",
    [
        ({"arrays": {"names": np.array(["a", "b"])}}, InputTypeError),
        ({"arrays": {"objects": np.array([{}], dtype=object)}}, InputTypeError),
        ({"arrays": {"../evil": np.zeros(2)}}, InputError),
        ({"metadata": {"f": object()}}, InputTypeError),
        ({"metadata": {"x": float("nan")}}, InputTypeError),
        ({"metadata": ["not", "a", "dict"]}, InputTypeError),
        ({"epoch": -1}, InputError),
    ],
)
def test_save_refuses_bad_extras_before_writing(tmp_path, extra, error):
    path = tmp_path / "model.npz"
    with pytest.raises(error):
        make_net().save(path, **extra)
    assert os.listdir(tmp_path) == []


def test_save_refuses_non_finite_weights(tmp_path):
    net = make_net()
    net.params[0] = np.nan  # bypasses set_params, as a broken kernel would
    with pytest.raises(InputError, match="NaN or infinite"):
        net.save(tmp_path / "model.npz")
    assert os.listdir(tmp_path) == []


def nested(depth: int) -> dict:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return {"deep": value}


@pytest.mark.parametrize(
    "extra, error, fragment",
    [
        ({"arrays": {"scaler_min": [np.nan, 0, 0, 0]}}, InputError, "NaN or infinite"),
        ({"arrays": {"scaler_max": np.array([1.0, np.inf])}}, InputError, "NaN or infinite"),
        ({"metadata": {"a": "x" * (gio.MAX_META_BYTES + 1)}}, InputError, "metadata takes"),
        ({"arrays": [1, 2]}, InputTypeError, "arrays must be a dict"),
        ({"arrays": {"a": [[1], [1, 2]]}}, InputError, "same length"),
        ({"metadata": nested(5000)}, InputError, "nested more than"),
        ({"metadata": nested(gio.MAX_META_DEPTH)}, InputError, "nested more than"),
    ],
)
def test_save_refuses_what_load_would_refuse(tmp_path, extra, error, fragment):
    path = tmp_path / "model.npz"
    with pytest.raises(error, match=fragment):
        make_net().save(path, **extra)
    assert os.listdir(tmp_path) == []


def test_load_refuses_deeply_nested_metadata_that_save_refuses(tmp_path):
    members = members_of(make_net())
    members[gio.META_KEY] = meta_array({**meta_of(make_net()), "metadata": nested(100)})
    refused(write_npz(tmp_path / "model.npz", members), "nested more than")
    make_net().save(tmp_path / "ok.npz", metadata=nested(gio.MAX_META_DEPTH - 3))
    gpunn.load(tmp_path / "ok.npz", backend="numpy")


def test_extra_arrays_share_one_size_limit_on_save_and_load(tmp_path, monkeypatch):
    monkeypatch.setattr(gio, "MAX_EXTRA_BYTES", 1 << 20)
    big = {"a": np.zeros(1 << 17), "b": np.ones(10_000)}  # 1 MiB + 80 kB
    with pytest.raises(InputError, match="extra arrays take"):
        make_net().save(tmp_path / "model.npz", arrays=big)
    assert os.listdir(tmp_path) == []
    members = {**members_of(make_net()), "extra_a": big["a"], "extra_b": big["b"]}
    refused(write_npz(tmp_path / "model.npz", members), "extra arrays take")
    make_net().save(tmp_path / "ok.npz", arrays={"a": big["a"]})
    assert gpunn.load(tmp_path / "ok.npz", backend="numpy").checkpoint.arrays["a"].size == 1 << 17


# ------------------------------------------------------------------ weights beyond the dtype
def test_set_params_refuses_weights_beyond_float32():
    net = gpunn.Network([2, 2], backend="numpy")
    before = net.get_params()
    with pytest.raises(InputError, match=r"layer 1 W .*1e\+39.*float64"):
        net.set_params([(np.full((2, 2), 1e39), np.zeros(2))])
    assert same_params_list(net.get_params(), before)
    wide = gpunn.Network([2, 2], backend="numpy", dtype="float64")
    wide.set_params([(np.full((2, 2), 1e39), np.zeros(2))])
    assert wide.get_params()[0][0][0, 0] == 1e39


def same_params_list(a, b):
    return all(np.array_equal(x, y) for pa, pb in zip(a, b, strict=True)
               for x, y in zip(pa, pb, strict=True))


@pytest.mark.parametrize("key", ["W0", "b1", "optimizer_velocity"])
def test_float32_model_file_with_float64_values_beyond_its_range(tmp_path, key):
    net = make_net()
    members = members_of(net)
    shape = members[key].shape if key in members else (net.n_params,)
    members[key] = np.full(shape, 1e300)
    message = refused(write_npz(tmp_path / "model.npz", members), "float32", "float64")
    assert (key if key in members_of(net) else "optimizer state 'velocity'") in message


def test_predict_refuses_a_model_file_with_weights_beyond_its_dtype(tmp_path, capsys):
    from gpunn import cli

    members = members_of(make_net())
    members["W0"] = np.full((5, 4), 1e300)
    model = write_npz(tmp_path / "model.npz", members)
    inputs = tmp_path / "x.csv"
    inputs.write_text("1,2,3,4\n")
    out = tmp_path / "out.csv"
    status = cli.main(["predict", str(model), str(inputs), "--out", str(out),
                       "--backend", "numpy"])
    assert status != 0
    assert "W0" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ refusing bad files
def test_missing_file_folder_and_bad_path(tmp_path):
    refused(tmp_path / "absent.npz", "does not exist")
    refused(tmp_path, "is a folder")
    with pytest.raises(InputTypeError, match="file path"):
        gpunn.load(None)


def test_device_and_pipe_are_not_regular_files(tmp_path):
    refused("/dev/null", "not a regular file")
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    refused(fifo, "not a regular file")  # refused without opening it (which would block)


def test_text_file_named_npz(tmp_path):
    path = tmp_path / "model.npz"
    path.write_text("sizes: 4, 5, 3\nweights: none\n")
    message = refused(path, "not an .npz archive")
    assert "pickle" not in message


def test_random_bytes_and_empty_file(tmp_path):
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    refused(noise, "not a gpunn model file")
    fake_zip = tmp_path / "fake.npz"
    fake_zip.write_bytes(b"PK\x03\x04" + np.random.default_rng(1).bytes(4096))
    refused(fake_zip, "truncated or corrupt")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    refused(empty, "empty")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file(tmp_path, fraction):
    path = tmp_path / "model.npz"
    make_net().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    refused(path)


def test_flipped_byte_in_weights_fails_the_checksum(tmp_path):
    path = tmp_path / "model.npz"
    net = make_net()
    net.save(path)
    data = bytearray(path.read_bytes())
    W0 = net.get_params()[0][0].tobytes()
    at = bytes(data).index(W0)
    data[at + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(path, "CRC")


class _Marker:
    """Unpickling this creates ``path``: proof that code from the file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_plain_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps({"weights": _Marker(marker)}))
    message = refused(path, "pickle")
    assert "never unpickles" in message
    assert not marker.exists()
    path.write_bytes(pickle.dumps(_Marker(marker), protocol=0))  # protocol 0: no 0x80 opcode
    refused(path, "not a gpunn model file")
    assert not marker.exists()


@pytest.mark.parametrize("key", ["W0", "extra_scale", "optimizer_velocity", "gpunn_meta"])
def test_object_array_holding_a_pickle_is_refused(tmp_path, key):
    marker = tmp_path / "pwned"
    members = members_of(make_net())
    members[key] = np.array([_Marker(marker), None], dtype=object)
    path = write_npz(tmp_path / "model.npz", members)
    message = refused(path)
    assert "object" in message or "malformed" in message, message
    assert not marker.exists()


def test_bare_npy_is_refused(tmp_path):
    path = tmp_path / "model.npy"
    np.save(path, np.zeros((5, 4)))
    refused(path, "bare .npy")


@pytest.mark.parametrize("missing", ["W0", "b1", "gpunn_meta"])
def test_missing_arrays(tmp_path, missing):
    members = members_of(make_net())
    del members[missing]
    path = write_npz(tmp_path / "model.npz", members)
    refused(path, "metadata" if missing == "gpunn_meta" else repr(missing))


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("W0", np.zeros((4, 5), np.float32), "shape (4, 5)"),
        ("b1", np.zeros((3, 1), np.float32), "shape (3, 1)"),
        ("W1", np.zeros((3, 5), np.int32), "not floating point"),
        ("W0", np.full((5, 4), np.nan, np.float32), "NaN or infinite"),
        ("b0", np.array([0, 0, np.inf, 0, 0], np.float32), "NaN or infinite"),
        ("W2", np.zeros((3, 3), np.float32), "layer the network does not have"),
        ("surprise", np.zeros(3), "unknown"),
        ("optimizer_velocity", np.zeros(7), "optimizer state"),
        ("W0", np.array([["a"] * 4] * 5), "dtype"),
        ("W0", np.zeros((5, 4), np.complex64), "dtype"),
    ],
)
def test_mis_shaped_or_bad_arrays(tmp_path, key, value, fragment):
    members = members_of(make_net())
    members[key] = value
    refused(write_npz(tmp_path / "model.npz", members), fragment)


def test_fortran_order_and_big_endian_weights_load_exactly(tmp_path):
    net = make_net(dtype="float64", seed=5)
    members = members_of(net)
    members["W0"] = np.asfortranarray(members["W0"])
    members["W1"] = members["W1"].astype(">f8")
    loaded = gpunn.load(write_npz(tmp_path / "model.npz", members), backend="numpy")
    assert same_params(loaded, net)


@pytest.mark.parametrize(
    "meta, fragment",
    [
        ("{not json", "bad JSON"),
        ('"a string"', "not a JSON object"),
        ("\udcff", "bad JSON"),
        (lambda m: {**m, "format_version": 99}, "upgrade gpunn"),
        (lambda m: {**m, "format_version": "1"}, "format version"),
        (lambda m: {k: v for k, v in m.items() if k != "format_version"}, "format version"),
        (lambda m: {**m, "config": {**m["config"], "layers": 3}}, "unknown key"),
        (lambda m: {**m, "config": {k: v for k, v in m["config"].items() if k != "loss"}},
         "missing"),
        (lambda m: {**m, "config": {**m["config"], "activation": "__import__('os')"}},
         "activation"),
        (lambda m: {**m, "config": {**m["config"], "sizes": [4, -5, 3]}}, "sizes[1]"),
        (lambda m: {**m, "config": {**m["config"], "sizes": "4-5-3"}}, "sizes"),
        (lambda m: {**m, "config": {**m["config"], "dtype": "int32"}}, "dtype"),
        (lambda m: {**m, "config": {**m["config"], "seed": True}}, "seed"),
        (lambda m: {**m, "config": []}, "config"),
        (lambda m: {**m, "epoch": -3}, "epoch"),
        (lambda m: {**m, "optimizer": {"name": "sgd", "lr": "fast"}}, "optimizer"),
        (lambda m: {**m, "metadata": [1, 2]}, "metadata"),
        (lambda m: {**m, "config": {**m["config"], "output": "identity",
                                    "loss": "cross_entropy"}}, "invalid network"),
    ],
)
def test_bad_metadata(tmp_path, meta, fragment):
    members = members_of(make_net())
    if callable(meta):
        members[gio.META_KEY] = meta_array(meta(meta_of(make_net())))
    else:
        members[gio.META_KEY] = np.frombuffer(meta.encode("utf-8", "surrogateescape"), np.uint8)
    refused(write_npz(tmp_path / "model.npz", members), fragment)


def test_newer_format_is_refused_by_name(tmp_path):
    members = members_of(make_net())
    members[gio.META_KEY] = meta_array({**meta_of(make_net()), "format_version": 2})
    path = write_npz(tmp_path / "future.npz", members)
    message = refused(path, "format version 2", "upgrade gpunn")
    assert str(path) in message


def test_invalid_optimizer_settings_are_a_model_file_error(tmp_path):
    members = members_of(make_net())
    members[gio.META_KEY] = meta_array(
        {**meta_of(make_net()), "optimizer": {"name": "warp", "lr": 0.1}}
    )
    loaded = gpunn.load(write_npz(tmp_path / "model.npz", members), backend="numpy")
    with pytest.raises(ModelFileError, match="optimizer"):
        loaded.checkpoint.optimizer()


# ------------------------------------------------------------------ hostile archives
def test_enormous_declared_shape_is_refused_before_reading(tmp_path):
    members = members_of(make_net())
    members["W0"] = npy_bytes(
        header="{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 4), }",
        data=b"\0" * 80,
    )
    refused(write_npz(tmp_path / "model.npz", members), "shape (1000000000000, 4)")


def test_huge_network_declared_with_little_data_is_refused(tmp_path):
    members = members_of(make_net())
    meta = meta_of(make_net())
    meta["config"]["sizes"] = [100000, 100000, 3]
    members[gio.META_KEY] = meta_array(meta)
    members["W0"] = npy_bytes(
        header="{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }",
        data=b"\0" * 64,
    )
    members["b0"] = np.zeros(100000, np.float32)
    members["W1"] = np.zeros((3, 100000), np.float32)
    refused(write_npz(tmp_path / "model.npz", members), "truncated or corrupt")


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-5, 4), }",
        "{'descr': '|O', 'fortran_order': False, 'shape': (5, 4), }",
        "{'descr': [('a', '|O')], 'fortran_order': False, 'shape': (5, 4), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': __import__('os').getpid(), }",
        "[1, 2, 3]",
    ],
)
def test_hostile_npy_headers(tmp_path, header):
    members = members_of(make_net())
    members["W0"] = npy_bytes(header=header, data=b"\0" * 80)
    refused(write_npz(tmp_path / "model.npz", members))


def test_zip_bomb_member_is_refused(tmp_path):
    members = members_of(make_net())
    members["extra_bomb"] = np.zeros(gio.DEFLATE_FREE_BYTES // 4 + 1024, np.float32)
    path = write_npz(tmp_path / "model.npz", members, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1_000_000
    refused(path, "zip bomb")


def test_many_small_compressed_members_are_a_zip_bomb(tmp_path):
    members = members_of(make_net())
    for i in range(5):  # each below the size where one member's ratio is checked
        members[f"extra_pad{i}"] = np.zeros((4 << 20) // 8)
    path = write_npz(tmp_path / "model.npz", members, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 200_000
    refused(path, "zip bomb")


def test_optimizer_state_beyond_what_the_network_needs_is_refused(tmp_path):
    net = gpunn.Network([300, 300, 3], backend="numpy")
    members = members_of(net)
    for i in range(8):  # each of a valid shape; together far more than any optimizer keeps
        members[f"optimizer_s{i}"] = np.zeros(net.n_params)
    refused(write_npz(tmp_path / "model.npz", members), "weights and optimizer state take")


def test_member_expanding_past_its_declared_size_is_not_read_on(tmp_path):
    import tracemalloc

    members = members_of(make_net())
    declared = npy_bytes(np.zeros(16, np.float32))
    members["extra_liar"] = declared + bytes(64 << 20)
    path = write_npz(tmp_path / "model.npz", members, compression=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("extra_liar.npy")
    real = struct.pack("<I", info.file_size)
    for at in (i for i in range(len(data) - 3) if data[i:i + 4] == real):
        data[at:at + 4] = struct.pack("<I", len(declared))  # local header and directory
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        refused(path, "truncated or corrupt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_compressed_model_file_loads(tmp_path):
    net = make_net(seed=4)
    path = write_npz(tmp_path / "model.npz", members_of(net), compression=zipfile.ZIP_DEFLATED)
    assert same_params(gpunn.load(path, backend="numpy"), net)


def test_duplicate_and_unexpected_members(tmp_path):
    path = tmp_path / "model.npz"
    members = members_of(make_net())
    write_npz(path, members)
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "a") as archive:
        archive.writestr("W0.npy", npy_bytes(np.zeros((5, 4), np.float32)))
    refused(path, "twice")
    other = write_npz(tmp_path / "other.npz", {**members, "../../etc/passwd": b"x"})
    with zipfile.ZipFile(other, "a") as archive:
        archive.writestr("notes.txt", b"hello")
    refused(other, "unexpected member")


def test_load_backend_errors_are_the_callers(tmp_path):
    path = tmp_path / "model.npz"
    make_net().save(path)
    with pytest.raises(InputError, match="backend") as info:
        gpunn.load(path, backend="bogus")
    assert not isinstance(info.value, ModelFileError)


def test_every_refusal_is_a_gpunn_value_error(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(GpunnError) as info:
        gpunn.load(path, backend="numpy")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key, value", [("epoch", 2.0), ("fit_seed", -1)])
def test_a_bad_training_state_is_not_called_a_network_config(tmp_path, key, value):
    members = members_of(make_net())
    members[gio.META_KEY] = meta_array({**meta_of(make_net()), key: value})
    message = refused(write_npz(tmp_path / "m.npz", members), "invalid training state", key)
    assert "network config" not in message
