"""MultiFashion on small idx files the test writes (the Debian package is never needed)."""
import gzip

import numpy as np
import pytest

from keras_minmax_mtl.data.fashion import (
    FASHION_FILES,
    FashionFileError,
    load_fashion_mnist,
    load_multi_fashion,
    multi_fashion,
    read_idx,
)

TRAIN, TEST = 120, 40  # images per part; image i of a part is the constant value VALUE[part](i)


def _value(part, i):
    return 1 + i if part == "train" else 1 + TRAIN + i


def _write_idx(path, kind, array, magic=None, extra=b""):
    magic = magic if magic is not None else (0x803 if kind == "images" else 0x801)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes() + extra)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion")
    for part, count in (("train", TRAIN), ("test", TEST)):
        values = np.array([_value(part, i) for i in range(count)])
        images = np.broadcast_to(values[:, None, None], (count, 28, 28))
        _write_idx(folder / FASHION_FILES[(part, "images")], "images", images)
        _write_idx(folder / FASHION_FILES[(part, "labels")], "labels", values % 10)
    return folder


def _sources(x):
    """The value of the left and right item of every canvas (pixels only one item covers)."""
    return np.rint(x[:, 2, 2, 0] * 255).astype(int), np.rint(x[:, 33, 33, 0] * 255).astype(int)


def test_canvases_labels_and_ink_are_those_of_the_two_items(fashion_dir):
    x, labels = load_multi_fashion("train", seed=3, num_examples=200, data_dir=fashion_dir)
    assert x.shape == (200, 36, 36, 1) and x.dtype == np.float32
    assert list(labels) == ["left", "right", "ink"]
    left, right = _sources(x)
    np.testing.assert_array_equal(labels["left"], left % 10)
    np.testing.assert_array_equal(labels["right"], right % 10)
    np.testing.assert_allclose(labels["ink"], (left + right) * 100 / 255, rtol=1e-6)
    # the canvas is the pixelwise maximum of the two items, which overlap
    np.testing.assert_allclose(x[:, 10, 10, 0], np.maximum(left, right) / 255, rtol=1e-6)
    assert x[:, 0, 35, 0].max() == 0  # top-right corner: neither item


def test_splits_use_disjoint_images_and_are_deterministic(fashion_dir):
    seen = {}
    for split in ("train", "validation", "test"):
        x, _ = load_multi_fashion(split, seed=0, num_examples=400, data_dir=fashion_dir)
        seen[split] = set(np.concatenate(_sources(x)).tolist())
    assert not seen["train"] & seen["validation"]
    assert max(seen["train"] | seen["validation"]) <= TRAIN
    assert min(seen["test"]) > TRAIN
    assert len(seen["validation"]) == TRAIN // 6  # the held-out pool of a small copy
    a = load_multi_fashion("train", seed=5, num_examples=50, data_dir=fashion_dir)
    b = load_multi_fashion("train", seed=5, num_examples=80, data_dir=fashion_dir)
    np.testing.assert_array_equal(a[0], b[0][:50])  # more examples only append
    c = load_multi_fashion("train", seed=6, num_examples=50, data_dir=fashion_dir)
    assert not np.array_equal(a[0], c[0])


def test_dataset_batches_and_fits_a_keras_model(fashion_dir):
    from keras_minmax_mtl.core.backend import keras

    ds = multi_fashion("validation", num_examples=10, batch_size=4, data_dir=fashion_dir)
    batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches] == [4, 4, 2]
    x, y = load_multi_fashion("validation", num_examples=10, data_dir=fashion_dir)
    np.testing.assert_array_equal(np.concatenate([b[1]["ink"] for b in batches]), y["ink"])
    (x_train, y_train), (x_test, _) = load_fashion_mnist(fashion_dir)
    assert x_train.shape == (TRAIN, 28, 28) and x_test.shape == (TEST, 28, 28)
    inp = keras.Input((36, 36, 1))
    h = keras.layers.Flatten()(inp)
    model = keras.Model(inp, {"left": keras.layers.Dense(10, name="left")(h),
                              "right": keras.layers.Dense(10, name="right")(h),
                              "ink": keras.layers.Dense(1, name="ink")(h)})
    model.compile("sgd", loss={"left": "sparse_categorical_crossentropy",
                               "right": "sparse_categorical_crossentropy", "ink": "mae"})
    assert np.isfinite(model.evaluate(ds, verbose=0)).all()


@pytest.mark.parametrize("damage, message", [
    ("magic", "is not an idx file of images"),
    ("truncated", "holds 10 bytes of images after its header; the header declares 7840"),
    ("extra", r"holds 7840\+ bytes"),
    ("huge", r"declares the shape \(4000000000, 28, 28\)"),
    ("not gzip", "is not a readable gzip file"),
])
def test_damaged_files_are_refused_by_name(tmp_path, damage, message):
    path = tmp_path / "images.gz"
    images = np.zeros((10, 28, 28))
    if damage == "magic":
        _write_idx(path, "images", images, magic=0x801)
    elif damage == "truncated":
        with gzip.open(path, "wb") as f:
            f.write((0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
                    + bytes(10))
    elif damage == "extra":
        _write_idx(path, "images", images, extra=b"\0")
    elif damage == "huge":
        with gzip.open(path, "wb") as f:
            f.write((0x803).to_bytes(4, "big") + (4_000_000_000).to_bytes(4, "big")
                    + (28).to_bytes(4, "big") * 2)
    else:
        path.write_bytes(b"not a gzip file at all")
    with pytest.raises(FashionFileError, match=message) as info:
        read_idx(path, "images")
    assert str(path) in str(info.value)


def test_missing_copy_says_how_to_get_it(tmp_path, fashion_dir):
    with pytest.raises(FashionFileError, match="apt-get install dataset-fashion-mnist"):
        load_multi_fashion("test", data_dir=tmp_path / "nowhere")
    with pytest.raises(FashionFileError, match="t10k-images-idx3-ubyte.gz"):
        load_multi_fashion("test", data_dir=tmp_path)
    with pytest.raises(ValueError, match="Argument `split` must be one of"):
        load_multi_fashion("val", data_dir=fashion_dir)
    with pytest.raises(ValueError, match="Received: num_examples=0"):
        load_multi_fashion("test", num_examples=0, data_dir=fashion_dir)


def test_kmm_train_on_multi_fashion_reports_accuracies_and_the_regression(fashion_dir, tmp_path,
                                                                          capsys):
    import json

    from keras_minmax_mtl.cli import main as cli
    from keras_minmax_mtl.data import fashion

    assert cli.DATASET_FACTS["multi_fashion"] == {
        "tasks": tuple(fashion.MULTI_FASHION_TASKS),
        "examples": dict(fashion.MULTI_FASHION_DEFAULT_EXAMPLES)}
    assert cli.DATA_DIRS["multi_fashion"] == (fashion.DEFAULT_DATA_DIR, tuple(sorted(
        fashion.FASHION_FILES.values())))
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "multi_fashion", "--data-dir", str(fashion_dir),
                     "--epochs", "1", "--train-examples", "64", "--test-examples", "32",
                     "--batch-size", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ink    test MAE" in printed and "(a regression)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["test_accuracy"]) == ["left", "right"]
    assert sorted(metrics["test_mae"]) == ["ink"]
    assert metrics["worst_task"] in ("left", "right")
    assert metrics["arguments"]["data_dir"] == str(fashion_dir)


def test_kmm_train_refuses_a_data_dir_without_the_files_before_tensorflow(tmp_path, capsys):
    from keras_minmax_mtl.cli import main as cli

    for argv, message in [
        (["--dataset", "multi_fashion", "--data-dir", str(tmp_path)],
         f"argument --data-dir: '{tmp_path}' lacks t10k-images-idx3-ubyte.gz"),
        (["--data-dir", str(tmp_path)], "argument --data-dir: only used with --dataset multi_fashion"),
        (["--normalize-losses", "maybe"], "argument --normalize-losses: invalid choice: 'maybe'"),
    ]:
        with pytest.raises(SystemExit) as info:
            cli.main(["train", *argv, "--out", str(tmp_path / "run")])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()
