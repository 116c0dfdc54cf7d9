"""Trains tiny Keras 3 multi-task models on one back-end, for `tests/test_keras3.py`.

Run as a script in a fresh process (the Keras 3 back-end is fixed per process)::

    KERAS_BACKEND=jax python tests/keras3_run.py OUT.json

It never imports tfmot or tf_keras before the checks that say so (`modules`),
then, on the TensorFlow back-end only, imports tfmot (which sets
`TF_USE_LEGACY_KERAS=1`) and trains once more (`legacy`), and hands the path a
tf_keras model (`legacy_error`). Results go to OUT.json; the test asserts.
"""
import json
import os
import sys
import tempfile

import numpy as np


def _keras():
    import keras
    from keras import layers
    return keras, layers


def seeded(model, seed):
    """`model` with weights drawn from a seeded numpy generator (`keras.utils.set_random_seed`
    would import TensorFlow on every back-end)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def dict_model(seed=1):
    """Dict outputs `{"zeta": (N, 1), "alpha": (N, 2)}`: the tasks are `["alpha", "zeta"]`."""
    keras, layers = _keras()
    x = keras.Input((3,))
    h = layers.Dense(4, activation="tanh", name="h")(x)
    return seeded(keras.Model(x, {"zeta": layers.Dense(1, name="z")(h),
                                  "alpha": layers.Dense(2, name="a")(h)}), seed)


def list_model(seed=2):
    """List outputs from layers `out_a` (N, 1) and `out_b` (N, 3 classes): the tasks."""
    keras, layers = _keras()
    x = keras.Input((3,))
    h = layers.Dense(4, activation="relu", name="h")(x)
    return seeded(keras.Model(x, [layers.Dense(1, name="out_a")(h),
                                  layers.Dense(3, activation="softmax", name="out_b")(h)]), seed)


def data(n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, {"zeta": rng.normal(size=(n, 1)).astype("float32"),
               "alpha": rng.normal(size=(n, 2)).astype("float32"),
               "out_a": rng.normal(size=(n, 1)).astype("float32"),
               "out_b": rng.integers(0, 3, size=(n,)).astype("int32")}


def max_difference(first, second):
    """The largest absolute difference between two lists of weights (booleans as 0/1)."""
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in zip(first, second))


def numpy(value):
    keras, _ = _keras()
    return keras.ops.convert_to_numpy(value).tolist()


def frozen(ascent, step_size, gamma, steps, losses=None):
    """Learning rate 0, the same full batch at every step: the losses stay fixed while the weights climb.

    `losses`: `{"alpha_loss": ..., "zeta_loss": ...}` of this network and batch when already
    known (the seeded network is the same in every call), else from `evaluate`.
    """
    keras, _ = _keras()
    from keras_minmax_mtl.keras3 import MinMaxMultiTask
    from keras_minmax_mtl.weighting import maths
    x, y = data()
    y = {"zeta": y["zeta"], "alpha": y["alpha"]}
    model = MinMaxMultiTask(dict_model(), step_size=step_size, gamma=gamma, ascent=ascent)
    model.compile(keras.optimizers.SGD(0.0), loss={"zeta": "mse", "alpha": "mae"})
    repeated = (np.concatenate([x] * steps), {t: np.concatenate([v] * steps) for t, v in y.items()})
    history = model.fit(*repeated, batch_size=16, epochs=1, shuffle=False, verbose=0)
    if losses is None:
        losses = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    return {"tasks": list(model.task_names), "losses": [losses["alpha_loss"], losses["zeta_loss"]],
            "weights": numpy(model.task_weights), "steps": int(numpy(model.train_step_counter)),
            "logged_weights": [history.history["alpha_weight"][-1], history.history["zeta_weight"][-1]],
            "evaluate_keys": sorted(losses),
            "closed_form": numpy(maths.closed_form_weights(keras.ops.convert_to_tensor(
                [losses["alpha_loss"], losses["zeta_loss"]]), gamma, keras.ops))}


def list_outputs_match_plain_keras():
    """Per-task losses against a plain model with the same losses; an EW step against plain Keras."""
    keras, _ = _keras()
    from keras_minmax_mtl.keras3 import EqualWeighting, MultiTaskModel
    x, y = data()
    targets = [y["out_a"], y["out_b"]]
    losses = ["mse", "sparse_categorical_crossentropy"]
    plain, ours_base = list_model(), list_model()
    ours_base.set_weights(plain.get_weights())
    plain.compile(keras.optimizers.SGD(0.1), loss=losses)
    ours = MultiTaskModel(ours_base, weighting=EqualWeighting(), scale="num_tasks")
    ours.compile(keras.optimizers.SGD(0.1), loss=losses, metrics={"out_b": ["accuracy"]})
    before_plain = plain.evaluate(x, targets, batch_size=16, verbose=0, return_dict=True)
    before_ours = ours.evaluate(x, {"out_b": y["out_b"], "out_a": y["out_a"]}, batch_size=16,
                                verbose=0, return_dict=True)
    weights = np.linspace(0.0, 2.0, len(x)).astype("float32")  # one sample weight for every task
    weighted_plain = plain.evaluate(x, targets, sample_weight=weights, batch_size=16, verbose=0,
                                    return_dict=True)
    weighted_ours = ours.evaluate(x, targets, sample_weight=weights, batch_size=16, verbose=0,
                                  return_dict=True)
    plain.fit(x, targets, batch_size=8, epochs=2, shuffle=False, verbose=0)
    history = ours.fit(x, targets, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return {"tasks": list(ours.task_names), "plain": before_plain, "ours": before_ours,
            "weighted_plain": weighted_plain, "weighted_ours": weighted_ours,
            "history_keys": sorted(history.history),
            "max_weight_difference": max_difference(plain.get_weights(), ours_base.get_weights()),
            "weight_difference_sum": sum(float(np.sum(np.abs(a - b))) for a, b in
                                         zip(plain.get_weights(), ours_base.get_weights()))}


def uncertainty_and_dwa():
    """UW's first SGD step by hand; DWA's weights against the epoch losses."""
    keras, _ = _keras()
    from keras_minmax_mtl.keras3 import DynamicWeightAverage, MultiTaskModel, UncertaintyWeighting
    x, y = data()
    targets = [y["out_a"], y["out_b"]]
    losses = ["mse", "sparse_categorical_crossentropy"]
    uw = MultiTaskModel(list_model(), weighting=UncertaintyWeighting())
    uw.compile(keras.optimizers.SGD(0.1), loss=losses)
    logs = uw.fit(x, targets, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    dwa = MultiTaskModel(list_model(), weighting=DynamicWeightAverage(temperature=2.0),
                         scale="num_tasks")
    dwa.compile(keras.optimizers.Adam(0.05), loss=losses)
    history = dwa.fit(x, targets, batch_size=8, epochs=4, shuffle=False, verbose=0).history
    return {"uw_log_variances": numpy(uw.weighting.log_variances),
            "uw_weights": numpy(uw.task_weights), "uw_logs": logs,
            "dwa_history": history, "dwa_weights": numpy(dwa.task_weights),
            "dwa_epochs_done": int(numpy(dwa.weighting.epochs_done))}


def loss_balance(first):
    """A `normalize_losses=True` + `loss_scales` step against plain Keras 3's `loss_weights`
    (`first`: the list model's losses on the batch); `"auto"` on losses 10^4 apart; the
    starved-task warning on raw ones."""
    import warnings
    keras, _ = _keras()
    from keras_minmax_mtl.keras3 import EqualWeighting, MinMaxMultiTask, MultiTaskModel
    x, y = data()
    targets = [y["out_a"], y["out_b"]]
    losses = ["mse", "sparse_categorical_crossentropy"]
    plain, base = list_model(), list_model()
    # the weighting sees s_t L_t / L_t^(0): plain Keras with loss_weights s_t / L_t^(0)
    plain.compile(keras.optimizers.SGD(0.1), loss=losses,
                  loss_weights=[3.0 / first[0], 0.5 / first[1]])
    ours = MultiTaskModel(base, weighting=EqualWeighting(), scale="num_tasks",
                          normalize_losses=True, loss_scales={"out_a": 3.0, "out_b": 0.5})
    ours.compile(keras.optimizers.SGD(0.1), loss=losses)
    result = {"plain": plain.fit(x, targets, batch_size=16, epochs=1, verbose=0).history,
              "ours": ours.fit(x, targets, batch_size=16, epochs=1, verbose=0).history,
              "initial_losses": numpy(ours.initial_losses), "first_losses": first,
              "max_weight_difference": max_difference(plain.get_weights(), base.get_weights())}
    yd = {"zeta": 100.0 * y["zeta"], "alpha": y["alpha"]}  # MSE ~10^4 beside an MAE ~1
    for name, normalize in [("auto", "auto"), ("raw", False)]:
        model = MinMaxMultiTask(dict_model(), step_size=0.1, gamma=1.0, normalize_losses=normalize)
        model.compile(keras.optimizers.SGD(0.0), loss={"zeta": "mse", "alpha": "mae"})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, yd, batch_size=16, epochs=3, verbose=0)
        result[name] = {"weights": numpy(model.task_weights),
                        "initial_losses": numpy(model.initial_losses),
                        "normalizes": bool(numpy(model.normalizes_losses())),
                        "warnings": [str(w.message) for w in caught
                                     if issubclass(w.category, UserWarning)
                                     and "vertex of the simplex" in str(w.message)]}
    return result


def data_parallel():
    """`keras.distribution.DataParallel` over two CPU devices (JAX): the same training as one device."""
    import jax
    keras, _ = _keras()
    from keras_minmax_mtl.keras3 import MinMaxMultiTask
    x, y = data()
    y = {"zeta": y["zeta"], "alpha": y["alpha"]}

    def train():
        model = MinMaxMultiTask(dict_model(), step_size=0.05, gamma=1.0, loss_scales={"zeta": 2.0})
        model.compile(keras.optimizers.Adam(0.05), loss={"zeta": "mse", "alpha": "mae"})
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
        return model, history

    single, single_history = train()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    try:
        parallel, parallel_history = train()
        sharding = str(parallel.base_model.get_layer("h").kernel.value.sharding)
    finally:
        keras.distribution.set_distribution(None)
    return {"devices": len(jax.devices()), "sharding": sharding,
            "task_weights": [numpy(single.task_weights), numpy(parallel.task_weights)],
            "steps": int(numpy(parallel.train_step_counter)),
            "max_weight_difference": max_difference(single.get_weights(), parallel.get_weights()),
            "history": [single_history, parallel_history]}


def save_load_continue(path):
    """An epoch, save, load; another epoch on both: the same weights, task weights and logs."""
    keras, _ = _keras()
    from keras_minmax_mtl.keras3 import MinMaxMultiTask
    x, y = data()
    y = {"zeta": y["zeta"], "alpha": y["alpha"]}
    model = MinMaxMultiTask(dict_model(), step_size=0.3, gamma=1.0, ascent="exponentiated",
                            update_every=2, normalize_losses=True, loss_scales={"zeta": 2.0})
    model.compile(keras.optimizers.Adam(0.05), loss={"zeta": "mse", "alpha": "mae"},
                  metrics={"zeta": ["mae"]})
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    model.save(path)
    loaded = keras.saving.load_model(path)
    same_at_load = all(np.array_equal(a, b) for a, b in zip(model.get_weights(), loaded.get_weights()))
    kept = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0).history
    resumed = loaded.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0).history
    return {"class": type(loaded).__name__, "same_at_load": same_at_load,
            "config": loaded.get_config()["ascent"], "update_every": loaded.weighting.update_every,
            "balance": [loaded.normalize_losses, loaded.loss_scales],
            "initial_losses": [numpy(model.initial_losses), numpy(loaded.initial_losses)],
            "optimizer_iterations": [int(numpy(model.optimizer.iterations)),
                                     int(numpy(loaded.optimizer.iterations))],
            "steps": [int(numpy(model.train_step_counter)), int(numpy(loaded.train_step_counter))],
            "task_weights": [numpy(model.task_weights), numpy(loaded.task_weights)],
            "weights_equal": all(np.array_equal(a, b) for a, b in
                                 zip(model.get_weights(), loaded.get_weights())),
            "max_weight_difference": max_difference(model.get_weights(), loaded.get_weights()),
            "history": [kept, resumed]}


def bad_inputs():
    """The message of every refused argument."""
    keras, layers = _keras()
    from keras_minmax_mtl.keras3 import MinMaxMultiTask, MinMaxWeighting, MultiTaskModel
    messages = {}

    def refused(name, make):
        try:
            make()
        except (TypeError, ValueError, RuntimeError) as error:
            messages[name] = f"{type(error).__name__}: {error}"
        else:
            messages[name] = "accepted"

    refused("step_size", lambda: MinMaxWeighting(step_size=0.0))
    refused("gamma", lambda: MinMaxWeighting(gamma=float("nan")))
    refused("update_every", lambda: MinMaxWeighting(update_every=0))
    refused("ascent", lambda: MinMaxWeighting(ascent="mirror"))
    refused("scale", lambda: MultiTaskModel(dict_model(), scale=-1))
    refused("weighting", lambda: MultiTaskModel(dict_model(), weighting="minmax"))
    refused("sequential", lambda: MultiTaskModel(keras.Sequential([keras.Input((3,)), layers.Dense(1)])))
    refused("not_a_model", lambda: MultiTaskModel(3))
    model = MinMaxMultiTask(dict_model())
    refused("loss_weights", lambda: model.compile("sgd", loss="mse", loss_weights={"zeta": 2.0}))
    refused("loss_missing", lambda: model.compile("sgd", loss={"zeta": "mse"}))
    refused("loss_unknown_name", lambda: model.compile("sgd", loss={"zeta": "mse", "alpha": "msee"}))
    refused("loss_list_length", lambda: model.compile("sgd", loss=["mse"]))
    refused("not_compiled", lambda: model.task_losses({"zeta": np.zeros((2, 1))}, {}))
    model.compile("sgd", loss="mse")
    refused("targets", lambda: model.task_losses(
        {"zeta": np.zeros((2, 1)), "beta": np.zeros((2, 2))}, {}))
    weighting = MinMaxWeighting(step_size=0.3, gamma=1.5, update_every=3, ascent="exponentiated")
    again = MinMaxWeighting.from_config(weighting.get_config())
    messages["round_trip"] = [again.get_config()[k] == weighting.get_config()[k]
                              for k in ("step_size", "gamma", "update_every", "ascent")]
    from keras_minmax_mtl.keras3 import (DynamicWeightAverage, EqualWeighting, LatestValue,
                                         UncertaintyWeighting)
    wrapped = MultiTaskModel(list_model(), weighting=MinMaxWeighting(0.3, 1.5, 3, "exponentiated"),
                             scale="num_tasks")
    copy = MultiTaskModel.from_config(wrapped.get_config())
    messages["model_round_trip"] = [type(copy.weighting).__name__, copy.weighting.get_config()["ascent"],
                                    copy.weighting.update_every, copy.scale, list(copy.task_names)]
    messages["other_round_trips"] = [
        type(EqualWeighting.from_config(EqualWeighting().get_config())).__name__,
        LatestValue.from_config(LatestValue("a_weight").get_config()).name,
        UncertaintyWeighting.from_config(UncertaintyWeighting(-0.5).get_config()).initial_log_variance,
        DynamicWeightAverage.from_config(DynamicWeightAverage(3.0).get_config()).temperature]
    balanced = MultiTaskModel(list_model(), normalize_losses="auto", loss_scales={"out_b": 1.5})
    copy = MultiTaskModel.from_config(balanced.get_config())
    messages["balance_round_trip"] = [copy.normalize_losses, copy.loss_scales,
                                      MinMaxMultiTask(list_model()).normalize_losses]
    refused("normalize_losses", lambda: MultiTaskModel(list_model(), normalize_losses="yes"))
    refused("loss_scales", lambda: MultiTaskModel(list_model(), loss_scales={"depth": 2.0}))
    refused("loss_scales_value", lambda: MultiTaskModel(list_model(), loss_scales={"out_a": 0.0}))
    refused("temperature", lambda: DynamicWeightAverage(temperature=0))
    refused("initial_log_variance", lambda: UncertaintyWeighting(float("inf")))
    return messages


def legacy(messages):
    """After `import tensorflow_model_optimization` (TF_USE_LEGACY_KERAS=1): still trains; tf_keras refused."""
    import tensorflow_model_optimization  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1)
    import tensorflow as tf
    keras, _ = _keras()
    from keras_minmax_mtl.keras3 import MinMaxMultiTask
    x, y = data()
    model = MinMaxMultiTask(dict_model(), step_size=0.2, gamma=2.0)
    model.compile(keras.optimizers.SGD(0.0), loss={"zeta": "mse", "alpha": "mae"})
    model.fit(x, {"zeta": y["zeta"], "alpha": y["alpha"]}, batch_size=8, epochs=1, verbose=0)
    inputs = tf.keras.Input((3,))
    legacy_model = tf.keras.Model(inputs, tf.keras.layers.Dense(1, name="t")(inputs))
    try:
        MinMaxMultiTask(legacy_model)
        messages["legacy_error"] = "accepted"
    except TypeError as error:
        messages["legacy_error"] = str(error)
    return {"env": os.environ.get("TF_USE_LEGACY_KERAS"), "steps": int(numpy(model.train_step_counter)),
            "weights": numpy(model.task_weights), "tf_keras_class": type(legacy_model).__module__}


def mirrored(messages):
    """Training under a two-replica `tf.distribute.MirroredStrategy` is refused, naming why."""
    import tensorflow as tf
    keras, _ = _keras()
    from keras_minmax_mtl.keras3 import MinMaxMultiTask
    x, y = data()
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = MinMaxMultiTask(dict_model(), step_size=0.2, gamma=2.0)
        model.compile(keras.optimizers.SGD(0.0), loss={"zeta": "mse", "alpha": "mae"})
    try:
        model.fit(x, {"zeta": y["zeta"], "alpha": y["alpha"]}, batch_size=16, epochs=1, verbose=0)
        messages["mirrored"] = "accepted"
    except NotImplementedError as error:
        messages["mirrored"] = str(error)
    messages["mirrored_steps"] = int(numpy(model.train_step_counter))


def main(out):
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        # Two logical CPUs for `mirrored`, set before TensorFlow initialises.
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    keras, _ = _keras()
    result = {"backend": keras.backend.backend()}
    result["frozen_projected"] = frozen("projected", 0.2, 2.0, steps=40)
    result["frozen_exponentiated"] = frozen(
        "exponentiated", 0.5, 5.0, steps=3, losses=dict(zip(
            ["alpha_loss", "zeta_loss"], result["frozen_projected"]["losses"])))
    result["list"] = list_outputs_match_plain_keras()
    result["uw_dwa"] = uncertainty_and_dwa()
    uw_logs = result["uw_dwa"]["uw_logs"]
    result["balance"] = loss_balance([uw_logs["out_a_loss"][0], uw_logs["out_b_loss"][0]])
    # Before any `get_config` or save: Keras' own `serialize_keras_object` imports TensorFlow
    # where it is installed, on every back-end.
    result["modules"] = sorted(m for m in ("tf_keras", "tensorflow_model_optimization", "tensorflow")
                               if m in sys.modules)
    result["errors"] = bad_inputs()
    with tempfile.TemporaryDirectory() as folder:
        result["save_load"] = save_load_continue(os.path.join(folder, "model.keras"))
    if result["backend"] == "jax":
        result["data_parallel"] = data_parallel()
    if result["backend"] == "tensorflow":
        mirrored(result["errors"])
        result["legacy"] = legacy(result["errors"])
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=float)


if __name__ == "__main__":
    main(sys.argv[1])
