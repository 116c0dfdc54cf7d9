"""NYUv2: the MTAN-layout loader, the losses and metrics (against NumPy), Δm and the network."""
import numpy as np
import pytest
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data import nyuv2
from keras_minmax_mtl.data.networks import nyuv2_network
from keras_minmax_mtl.data.nyuv2_metrics import (
    HIGHER_IS_BETTER,
    SINGLE_TASK_SEGNET,
    DepthAbsError,
    DepthL1,
    DepthRelError,
    NormalAngleMean,
    NormalAngleMedian,
    NormalAngleWithin,
    NormalCosine,
    PixelAccuracy,
    SegmentationCrossEntropy,
    SegmentationMIoU,
    delta_m,
    metrics_from_logs,
    nyuv2_losses,
    nyuv2_metrics,
)

H, W = 4, 6


def write_split(root, split="train", n=3, seed=0, shape=(H, W)):
    rng = np.random.default_rng(seed)
    arrays = []
    for folder in ("image", "label", "depth", "normal"):
        (root / split / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = {"image": rng.random(shape + (3,)),
             "label": rng.integers(-1, 13, size=shape).astype(np.float32),
             "depth": rng.uniform(0.5, 3, size=shape + (1,)) * (rng.random(shape + (1,)) > 0.2),
             "normal": rng.normal(size=shape + (3,))}
        for folder, array in a.items():
            np.save(root / split / folder / f"{i}.npy", array.astype(np.float32))
        arrays.append(a)
    return arrays


def random_batch(seed=0, b=2):
    rng = np.random.default_rng(seed)
    label = rng.integers(-1, 4, size=(b, H, W)).astype(np.int32)
    probs = rng.random((b, H, W, 4)).astype(np.float32)
    probs /= probs.sum(-1, keepdims=True)
    depth = (rng.uniform(0.5, 3, (b, H, W, 1)) * (rng.random((b, H, W, 1)) > 0.3)).astype(np.float32)
    depth_pred = rng.uniform(0, 3, (b, H, W, 1)).astype(np.float32)
    normal = rng.normal(size=(b, H, W, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[:, 0, 0] = 0.0  # invalid pixels
    normal_pred = rng.normal(size=(b, H, W, 3)).astype(np.float32)
    return label, probs, depth, depth_pred, normal, normal_pred


def np_angles(normal, pred):
    pred = pred / np.linalg.norm(pred, axis=-1, keepdims=True)
    valid = np.any(normal != 0, axis=-1)
    cos = np.clip(np.sum(pred * normal, -1), -1, 1)
    return np.degrees(np.arccos(cos))[valid]


# ------------------------------------------------------------------ loader
def test_loader_reads_the_mtan_layout_exactly(tmp_path):
    arrays = write_split(tmp_path, n=3)
    image, y = next(iter(nyuv2(tmp_path, "train", batch_size=3, shuffle=False)))
    assert image.shape == (3, H, W, 3) and y["segmentation"].dtype == tf.int32
    assert list(y) == ["segmentation", "depth", "normal"]
    for i, a in enumerate(arrays):
        np.testing.assert_array_equal(image[i], a["image"].astype(np.float32))
        np.testing.assert_array_equal(y["segmentation"][i], a["label"].astype(np.int32))
        np.testing.assert_array_equal(y["depth"][i], a["depth"].astype(np.float32))
        np.testing.assert_array_equal(y["normal"][i], a["normal"].astype(np.float32))
    assert -1 in y["segmentation"].numpy()


def test_missing_split_folder_error_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        nyuv2(tmp_path, "train")
    message = str(info.value)
    assert str(tmp_path / "train") in message
    assert "<data_dir>/<split>/label/<i>.npy" in message and "github.com/lorenmt/mtan" in message


def test_missing_subfolder_is_named(tmp_path):
    write_split(tmp_path)
    (tmp_path / "train" / "normal" / "0.npy").unlink()
    for f in (tmp_path / "train" / "normal").iterdir():
        f.unlink()
    (tmp_path / "train" / "normal").rmdir()
    with pytest.raises(FileNotFoundError, match="normal"):
        nyuv2(tmp_path, "train")


def test_mismatched_indices_and_shapes_are_rejected(tmp_path):
    write_split(tmp_path)
    (tmp_path / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(ValueError, match="same indices"):
        nyuv2(tmp_path, "train")
    write_split(tmp_path, split="val")
    np.save(tmp_path / "val" / "label" / "0.npy", np.zeros((H, W + 1), np.float32))
    with pytest.raises(ValueError, match=r"must have shape \(4, 6\)"):
        nyuv2(tmp_path, "val")


# ------------------------------------------------------------------ losses
def test_losses_match_numpy_per_image():
    label, probs, depth, depth_pred, normal, normal_pred = random_batch()
    ce = SegmentationCrossEntropy().call(label, probs).numpy()
    l1 = DepthL1().call(depth, depth_pred).numpy()
    cos = NormalCosine().call(normal, normal_pred).numpy()
    unit = normal_pred / np.linalg.norm(normal_pred, axis=-1, keepdims=True)
    for i in range(2):
        valid = label[i] != -1
        picked = np.take_along_axis(probs[i], np.maximum(label[i], 0)[..., None], -1)[..., 0]
        assert ce[i] == pytest.approx(np.mean(-np.log(picked[valid])), rel=1e-5)
        dv = depth[i, ..., 0] != 0
        assert l1[i] == pytest.approx(np.mean(np.abs(depth_pred[i] - depth[i])[..., 0][dv]), rel=1e-5)
        nv = np.any(normal[i] != 0, -1)
        assert cos[i] == pytest.approx(1 - np.mean(np.sum(unit[i] * normal[i], -1)[nv]), rel=1e-5)
    batch_mean = DepthL1()(depth, depth_pred).numpy()
    assert batch_mean == pytest.approx(l1.mean(), rel=1e-6)


def test_losses_give_zero_for_images_without_valid_pixels():
    assert SegmentationCrossEntropy().call(-np.ones((1, 2, 2), np.int32),
                                           np.full((1, 2, 2, 3), 1 / 3, np.float32)).numpy()[0] == 0
    assert DepthL1().call(np.zeros((1, 2, 2, 1), np.float32),
                          np.ones((1, 2, 2, 1), np.float32)).numpy()[0] == 0
    assert NormalCosine().call(np.zeros((1, 2, 2, 3), np.float32),
                               np.ones((1, 2, 2, 3), np.float32)).numpy()[0] == 0


# ----------------------------------------------------------------- metrics
def test_segmentation_metrics_match_a_numpy_confusion_matrix_over_two_batches():
    miou, acc = SegmentationMIoU(num_classes=4), PixelAccuracy(num_classes=4)
    labels, guesses = [], []
    for seed in (0, 1):
        label, probs, *_ = random_batch(seed)
        miou.update_state(label, probs)
        acc.update_state(label, probs)
        valid = label != -1
        labels.append(label[valid])
        guesses.append(probs.argmax(-1)[valid])
    t, g = np.concatenate(labels), np.concatenate(guesses)
    ious = []
    for c in range(4):
        union = np.sum((t == c) | (g == c))
        if union:
            ious.append(np.sum((t == c) & (g == c)) / union)
    assert float(miou.result()) == pytest.approx(100 * np.mean(ious), rel=1e-5)
    assert float(acc.result()) == pytest.approx(100 * np.mean(t == g), rel=1e-5)


def test_miou_leaves_out_classes_absent_from_truth_and_prediction():
    metric = SegmentationMIoU(num_classes=13)
    label = np.array([[[0, 0, 1, -1]]], np.int32)
    probs = np.eye(13, dtype=np.float32)[np.array([[[0, 1, 1, 5]]])]
    metric.update_state(label, probs)
    # class 0: 1 / 2; class 1: 1 / 2; class 5 predicted only on an ignored pixel.
    assert float(metric.result()) == pytest.approx(50.0)


def test_depth_and_normal_metrics_match_numpy():
    _, _, depth, depth_pred, normal, normal_pred = random_batch(3)
    dv = depth != 0
    abs_err, rel_err = DepthAbsError(), DepthRelError()
    abs_err.update_state(depth, depth_pred)
    rel_err.update_state(depth, depth_pred)
    assert float(abs_err.result()) == pytest.approx(np.mean(np.abs(depth_pred - depth)[dv]), rel=1e-5)
    assert float(rel_err.result()) == pytest.approx(
        np.mean(np.abs(depth_pred - depth)[dv] / depth[dv]), rel=1e-5)
    angles = np_angles(normal, normal_pred)
    mean, median = NormalAngleMean(), NormalAngleMedian()
    mean.update_state(normal, normal_pred)
    median.update_state(normal, normal_pred)
    assert float(mean.result()) == pytest.approx(np.mean(angles), rel=1e-4)
    lower_median = np.sort(angles)[int(np.ceil(len(angles) / 2)) - 1]
    assert abs(float(median.result()) - lower_median) <= 180 / 18000 / 2 + 1e-4
    for threshold in (11.25, 22.5, 30, 90):
        within = NormalAngleWithin(threshold)
        within.update_state(normal, normal_pred)
        assert float(within.result()) == pytest.approx(100 * np.mean(angles < threshold), rel=1e-5)
    assert NormalAngleWithin(22.5).name == "within_22.5"


def test_median_is_the_centre_of_the_bin_reaching_half_the_pixels():
    metric = NormalAngleMedian(num_bins=4)  # 45-degree bins
    n = np.array([0.0, 0.0, 1.0], np.float32)
    # angles 0, 60, 60, 120 -> bins 0, 1, 1, 2; cumulative 1, 3, 4 >= 2 at bin 1.
    pred = np.stack([n, [0, np.sin(np.pi / 3), 0.5], [0, np.sin(np.pi / 3), 0.5],
                     [0, np.sin(2 * np.pi / 3), -0.5]]).astype(np.float32)
    metric.update_state(np.broadcast_to(n, (1, 1, 4, 3)), pred[None, None])
    assert float(metric.result()) == pytest.approx(67.5)
    metric.reset_state()
    assert float(metric.result()) == 0.0


@pytest.mark.parametrize("obj", [
    SegmentationCrossEntropy(ignore_index=255, from_logits=True), DepthL1(), NormalCosine(),
    SegmentationMIoU(num_classes=5, ignore_index=7), PixelAccuracy(num_classes=3),
    DepthAbsError(), DepthRelError(), NormalAngleMean(), NormalAngleMedian(num_bins=10),
    NormalAngleWithin(30)], ids=lambda o: type(o).__name__)
def test_losses_and_metrics_round_trip_through_their_config(obj):
    config = obj.get_config()
    clone = type(obj).from_config(config)
    assert clone.get_config() == config
    kind = keras.losses if isinstance(obj, keras.losses.Loss) else keras.metrics
    restored = kind.deserialize(kind.serialize(obj))
    assert type(restored) is type(obj) and restored.get_config() == config


# -------------------------------------------------------------------- Δm
def test_delta_m_on_a_hand_computed_example():
    # +10 % on a higher-is-better metric (-10), +20 % on a lower-is-better one (+20): mean +5.
    assert delta_m({"a": 110.0, "b": 1.2}, {"a": 100.0, "b": 1.0},
                   {"a": True, "b": False}) == pytest.approx(5.0)
    assert delta_m(dict(SINGLE_TASK_SEGNET)) == 0.0
    better = {**SINGLE_TASK_SEGNET, "miou": 38.30 * 1.09}
    assert delta_m(better) == pytest.approx(-1.0)
    assert set(HIGHER_IS_BETTER) == set(SINGLE_TASK_SEGNET)


def test_delta_m_rejects_unknown_metrics_and_zero_references():
    with pytest.raises(ValueError, match="no reference value for 'x'"):
        delta_m({"x": 1.0})
    with pytest.raises(ValueError, match="non-zero"):
        delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})
    with pytest.raises(ValueError, match="non-empty"):
        delta_m({})


# ----------------------------------------------------------------- network
def test_network_trains_on_the_loader_with_minmax_and_reports_every_metric(tmp_path):
    write_split(tmp_path, n=4, shape=(8, 8))
    ds = nyuv2(tmp_path, "train", batch_size=2)
    base = nyuv2_network((8, 8, 3), filters=(4,))
    assert base.output_names == ["segmentation", "depth", "normal"]
    model = kmm.MinMaxMultiTask(base, normalize_losses=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=nyuv2_losses(),
                  metrics=nyuv2_metrics())
    model.fit(ds, epochs=1, verbose=0)
    logs = model.evaluate(ds, verbose=0, return_dict=True)
    scores = metrics_from_logs(logs)
    assert sorted(scores) == sorted(SINGLE_TASK_SEGNET)
    assert np.isfinite(delta_m(scores))
    normals = base(next(iter(ds))[0])[2].numpy()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, rtol=1e-5)


def test_network_rejects_sizes_the_encoder_cannot_halve():
    with pytest.raises(ValueError, match="multiples of 4"):
        nyuv2_network((10, 8, 3), filters=(4, 8))
