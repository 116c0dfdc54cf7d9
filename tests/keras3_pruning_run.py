"""Prunes tiny Keras 3 models on one back-end, for `tests/test_keras3_pruning.py`.

Run in a fresh process (the Keras 3 back-end is fixed per process)::

    KERAS_BACKEND=jax python tests/keras3_pruning_run.py OUT.json

Writes what it saw to OUT.json; the test asserts. On TensorFlow it also
exports to LiteRT (Keras 3's exporter runs there only).
"""
import json
import os
import sys
import tempfile
import traceback

import numpy as np
import keras
from keras import layers

from keras_minmax_mtl.keras3 import MinMaxMultiTask
from keras_minmax_mtl.keras3 import dst as dst_module
from keras_minmax_mtl.keras3.pruning import (PruneMasked, ReweightedL1Stages, UpdateMasks,
                                             masked_layers, optimizer_slots, prune_model,
                                             sparsity_report, strip)
from keras_minmax_mtl.keras3.schedules import (ConstantSparsity, PolynomialDecay,
                                               ReweightedL1Schedule)

np_ = keras.ops.convert_to_numpy
BACKEND = keras.backend.backend()


def seeded(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def network(seed=0, activation="tanh"):
    x = keras.Input((6,))
    h = layers.Dense(8, activation=activation, name="h1")(x)
    h = layers.Dense(10, activation=activation, name="h2")(h)
    return seeded(keras.Model(x, {"b": layers.Dense(2, activation="softmax", name="b")(h),
                                  "a": layers.Dense(3, activation="softmax", name="a")(h)}), seed)


def data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, {"a": rng.integers(0, 3, n).astype("int32"), "b": rng.integers(0, 2, n).astype("int32")}


def compiled(base, optimizer="sgd"):
    model = MinMaxMultiTask(base, step_size=0.1, gamma=1.0)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", run_eagerly=True)
    return model


def wrapper_checks():
    """Each wrapped layer's output equals the plain layer's with kernel W*M (ones mask: with W)."""
    rng = np.random.default_rng(3)
    cases = {"dense": (layers.Dense(5, activation="relu"), (4, 7)),
             "conv2d": (layers.Conv2D(4, 3, padding="same", activation="relu"), (2, 6, 6, 3)),
             "depthwise": (layers.DepthwiseConv2D(3, depth_multiplier=2), (2, 6, 6, 3))}
    out = {}
    for name, (layer, shape) in cases.items():
        x = rng.normal(size=shape).astype("float32")
        plain = layer.__class__.from_config(layer.get_config())
        wrapped = PruneMasked(layer)
        ones = np_(wrapped(x))
        plain(x)
        plain.set_weights(layer.get_weights())
        same_with_ones = bool(np.array_equal(ones, np_(plain(x))))
        mask = (rng.random(wrapped.mask.shape) > 0.5).astype("float32")
        wrapped.mask.assign(mask)
        weights = layer.get_weights()
        weights[0] = weights[0] * mask
        plain.set_weights(weights)
        out[name] = {"ones": same_with_ones,
                     "masked_max_difference": float(np.abs(np_(wrapped(x)) - np_(plain(x))).max()),
                     "weights": [w.name for w in wrapped.weights]}
    return out


class Recorder(keras.callbacks.Callback):
    """After the pruning callback, before each step: per-layer zeros of W*M and the coefficients."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_begin(self, batch, logs=None):
        record = {"zeros": {w.layer.name: int(np.sum(np_(w.masked_kernel()) == 0))
                            for w in masked_layers(self.model)}}
        wrappers = masked_layers(self.model)
        if wrappers and wrappers[0].reweighted_l1:
            record["coefficient"] = float(np_(wrappers[0].coefficient))
            record["factors_match"] = all(
                np.allclose(np_(w.factors), 1.0 / (np.abs(np_(w.masked_kernel())) + 1e-3),
                            rtol=1e-6) for w in wrappers)
        self.steps.append(record)


def polynomial_run():
    x, y = data()
    model = compiled(prune_model(network()))
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=6, power=3, frequency=2)
    callback, recorder = UpdateMasks(schedule), Recorder()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback, recorder])
    return {"history": callback.history, "steps": recorder.steps,
            "sizes": {w.layer.name: int(np.prod(w.kernel.shape)) for w in masked_layers(model)},
            "schedule_values": [list(schedule(t)) for t in range(0, 10)],
            "constant_values": [list(ConstantSparsity(0.5, 2, 6, 2)(t)) for t in range(0, 9)]}


def save_load_run(folder):
    """Masks from a constant schedule, then save -> load: masks, weights, predictions identical."""
    x, y = data()
    model = compiled(prune_model(network()), optimizer="adam")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[UpdateMasks(ConstantSparsity(0.5, begin_step=1, frequency=2))])
    path = os.path.join(folder, "pruned.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    before, after = model.predict(x, verbose=0), again.predict(x, verbose=0)
    stripped = strip(model)
    plain = stripped.predict(x, verbose=0)
    return {
        "class": type(again).__name__,
        "wrappers": [w.name for w in masked_layers(again)],
        "masks_equal": all(np.array_equal(np_(a.mask), np_(b.mask))
                           for a, b in zip(masked_layers(model), masked_layers(again))),
        "weights_equal": all(np.array_equal(a, b) for a, b in zip(model.get_weights(), again.get_weights())),
        "predictions_equal": all(np.array_equal(before[t], after[t]) for t in before),
        "task_weights_equal": bool(np.array_equal(np_(model.task_weights), np_(again.task_weights))),
        "sparsity": sparsity_report(model)["overall"],
        "stripped_layers": [type(layer).__name__ for layer in stripped.base_model.layers],
        "stripped_sparsity": sparsity_report(stripped)["overall"],
        "stripped_max_difference": max(float(np.abs(plain[t] - before[t]).max()) for t in before),
        "stripped_task_weights_equal": bool(np.array_equal(np_(stripped.task_weights),
                                                           np_(model.task_weights))),
        "functional_strip_layers": [type(layer).__name__ for layer in strip(model.base_model).layers],
    }


def reweighted_run():
    x, y = data()
    base = prune_model(network(), reweighted_l1=True)
    model = compiled(base)
    schedule = ReweightedL1Schedule(0.5, prune_step=7, begin_step=3, refresh_steps=1)
    stages, recorder = ReweightedL1Stages(schedule, rho=1e-2, epsilon=1e-3), Recorder()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[stages, recorder])
    # The penalty each wrapper adds equals c * sum |W*M| * factors, computed here by hand.
    for w in masked_layers(model):
        w.coefficient.assign(0.25)
    base(x)
    penalty = float(sum(np_(v) for v in base.losses))
    by_hand = sum(0.25 * float(np.sum(np.abs(np_(w.masked_kernel())) * np_(w.factors)))
                  for w in masked_layers(model))
    return {"steps": recorder.steps, "refresh_steps": list(schedule.refresh_steps),
            "history": stages.history, "penalty": penalty, "penalty_by_hand": by_hand,
            "sizes": {w.layer.name: int(np.prod(w.kernel.shape)) for w in masked_layers(model)},
            "config": stages.get_config()}


def reference_gradients(model, x, y):
    """The gradient of the stripped (unwrapped) model's objective with respect to its hidden kernels."""
    plain = strip(model)
    plain.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    names = [w.layer.name for w in masked_layers(model)]
    kernels = [plain.base_model.get_layer(n).kernel for n in names]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = plain.compute_loss(x, y, plain(x, training=True), training=False)
        return [np_(g) for g in tape.gradient(loss, kernels)]
    import jax

    index = {id(k): i for i, k in enumerate(kernels)}
    frozen = [v.value for v in plain.non_trainable_variables]
    metrics = [v.value for v in plain.metrics_variables]

    def loss_of(values):
        trainable = [values[index[id(v)]] if id(v) in index else v.value
                     for v in plain.trainable_variables]
        y_pred, _ = plain.stateless_call(trainable, frozen, x, training=True)
        return plain.stateless_compute_loss(trainable, frozen, metrics, x=x, y=y, y_pred=y_pred,
                                            training=False)[0]

    return [np_(g) for g in jax.grad(loss_of)([k.value for k in kernels])]


def dst_run():
    x, y = data()
    model = compiled(prune_model(network(seed=4)), optimizer="adam")
    batch = (x[:16], {k: v[:16] for k, v in y.items()})
    updates = []

    class Watched(dst_module.DynamicSparseTraining):
        def update(self, t):
            before = [(np_(w.mask), np_(w.masked_kernel())) for w in self.wrappers]
            reference = reference_gradients(self.model, *batch)
            super().update(t)
            slots = [optimizer_slots(self.model.optimizer, w.kernel) for w in self.wrappers]
            grown = [(np_(w.mask) > 0) & ~(m > 0) for w, (m, _) in zip(self.wrappers, before)]
            updates.append({
                "slots": [len(s) for s in slots],
                "slots_zero_where_grown": all(np.all(np_(slot)[g] == 0)
                                              for s, g in zip(slots, grown) for slot in s),
                "grown_weights_zero": all(np.all(np_(w.kernel)[g] == 0)
                                          for w, g in zip(self.wrappers, grown)),
                "step": t,
                "fraction": self.history[-1]["drop_fraction"],
                "old_masks": [m.tolist() for m, _ in before],
                "values": [v.tolist() for _, v in before],
                "gradients": [g.tolist() for g in self.last_gradients],
                "reference_gradients": [g.tolist() for g in reference],
                "new_masks": [np_(w.mask).tolist() for w in self.wrappers],
                "zero_weights_outside_mask": all(
                    np.all(np_(w.kernel)[np_(w.mask) == 0] == 0) for w in self.wrappers),
            })

    callback = Watched(sparsity=0.5, method="rigl", density="uniform", update_every=2,
                       end_step=6, drop_fraction=0.5, gradient_data=batch, seed=1)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    set_model = compiled(prune_model(network(seed=4)))
    set_callback = dst_module.DynamicSparseTraining(
        sparsity=0.5, method="set", density="erk", update_every=2, end_step=6, seed=1)
    set_model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[set_callback])
    return {"initial_counts": callback.initial_counts, "updates": updates,
            "history": callback.history,
            "set": {"initial": set_callback.initial_counts,
                    "active": [[r["active"] for r in h["layers"].values()] for h in set_callback.history],
                    "grown": [sum(r["grown"] for r in h["layers"].values()) for h in set_callback.history]}}


def export_run(folder):
    from keras_minmax_mtl.keras3.export import ExportVerificationError, export_litert

    x, y = data(64)
    model = compiled(prune_model(network()), optimizer="adam")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0,
              callbacks=[UpdateMasks(ConstantSparsity(0.6, begin_step=1, frequency=100))])
    out = {}
    report = export_litert(model, os.path.join(folder, "int8.tflite"), quantization="int8",
                           representative_data=x)
    out["int8"] = {k: report[k] for k in ("bytes", "quantization", "tasks", "sparsity")}
    out["int8"]["verification"] = report["verification"]
    existing = os.path.join(folder, "kept.tflite")
    with open(existing, "wb") as f:
        f.write(b"the user's file")
    # The float file (one conversion: the test's time) is verified against a tolerance it cannot
    # meet, so the export fails after the conversion; its message gives the file's errors.
    try:
        export_litert(model, existing, float_tolerance=1e-12, representative_data=x)
        out["tight"] = "no error"
    except ExportVerificationError as error:
        out["tight"] = str(error)
    broken = compiled(prune_model(network()))
    masked_layers(broken)[0].kernel.assign(np.full((6, 8), np.nan, "float32"))
    try:
        export_litert(broken, existing, representative_data=x)
        out["nan"] = "no error"
    except ExportVerificationError as error:
        out["nan"] = str(error)
    with open(existing, "rb") as f:
        out["existing_content"] = f.read().decode()
    out["folder"] = sorted(os.listdir(folder))
    return out


def errors():
    found = {}
    attempts = {
        "polynomial_end": lambda: PolynomialDecay(0.0, 0.9, begin_step=5, end_step=5),
        "sparsity": lambda: ConstantSparsity(1.0),
        "frequency": lambda: ConstantSparsity(0.5, frequency=0),
        "refresh": lambda: ReweightedL1Schedule(0.5, prune_step=5, begin_step=2, refresh_steps=[7]),
        "schedule": lambda: UpdateMasks("polynomial"),
        "layer": lambda: PruneMasked(layers.BatchNormalization()),
        "layer_names": lambda: prune_model(network(), layer_names=["nope"]),
        "no_wrappers": lambda: compiled(network()).fit(*data(), epochs=1, verbose=0,
                                                       callbacks=[UpdateMasks(ConstantSparsity(0.5))]),
        "rigl_data": lambda: dst_module.DynamicSparseTraining(method="rigl"),
        "method": lambda: dst_module.DynamicSparseTraining(method="snip", gradient_data=data()),
        "dst_end_step": lambda: dst_module.DynamicSparseTraining(method="set", update_every=10,
                                                                 end_step=5),
        "dst_decay": lambda: dst_module.DynamicSparseTraining(method="set", decay="linear"),
    }
    if BACKEND == "jax":
        from keras_minmax_mtl.keras3.export import export_litert

        attempts["export_backend"] = lambda: export_litert(compiled(network()), "x.tflite")
    for name, attempt in attempts.items():
        try:
            attempt()
            found[name] = "no error"
        except Exception as error:  # noqa: BLE001 (the message is the result)
            found[name] = f"{type(error).__name__}: {error}"
    schedules = [ConstantSparsity(0.5, 2, 9, 3), PolynomialDecay(0.1, 0.9, 2, 50, 2, 5),
                 ReweightedL1Schedule(0.9, 30, 10, 2)]
    found["round_trip"] = [
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s)).get_config()
        == s.get_config() for s in schedules]
    callback = ReweightedL1Stages(schedules[2], rho=1e-4)
    found["callback_round_trip"] = (keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(callback)).get_config() == callback.get_config())
    return found


def main(out):
    result = {"backend": BACKEND}
    with tempfile.TemporaryDirectory() as folder:
        parts = {"wrapper": wrapper_checks, "polynomial": polynomial_run,
                 "save_load": lambda: save_load_run(folder), "reweighted": reweighted_run,
                 "dst": dst_run, "errors": errors}
        if BACKEND == "tensorflow":
            export_folder = os.path.join(folder, "export")
            os.mkdir(export_folder)
            parts["export"] = lambda: export_run(export_folder)
        for name, part in parts.items():
            try:
                result[name] = part()
            except Exception:  # noqa: BLE001 (reported to the test, which fails on it)
                result[name] = {"crashed": traceback.format_exc()}
    with open(out, "w") as f:
        json.dump(result, f, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


if __name__ == "__main__":
    main(sys.argv[1])
