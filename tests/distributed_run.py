"""Trains the tiny test model under `tf.distribute` strategies, for `tests/test_distribute.py`.

Run as a script (in a fresh process, because logical devices and collective
ops must be configured before TensorFlow initialises)::

    python tests/distributed_run.py mirrored OUT.json
    python tests/distributed_run.py worker OUT.json   # with TF_CONFIG set, one per worker

`mirrored` splits the CPU into two logical devices and trains every model of
`MIRRORED_CASES` twice from the same seeded weights and data: on the default
(single-device) strategy and under `MirroredStrategy(["/cpu:0", "/cpu:1"])`;
it also takes a frozen step to check that the losses are global-batch means,
and trains the tiny model with `DynamicSparseTraining(method="rigl")` on both
strategies, recording each replica's copy of every mask after every mask
update (`dst_run`; in this process, not a third one importing TensorFlow).
`worker` is one worker of a `MultiWorkerMirroredStrategy` run of the
"minmax" case on the same global batches, whose single-device reference is
the "minmax" run of `mirrored`. Both write their results as JSON to OUT.json.
"""
import json
import os
import sys

GLOBAL_BATCH = 8
NUM_SAMPLES = 32
EPOCHS = 3
TASKS = ("a", "b", "c")
STEPS_PER_EPOCH = NUM_SAMPLES // GLOBAL_BATCH


def _modules():
    # Imported lazily: the `mirrored` mode configures devices first.
    import keras_minmax_mtl as kmm
    from keras_minmax_mtl.core.backend import keras
    from tests import helpers
    return kmm, keras, helpers


def build_model(case, lr=0.1):
    """The compiled model of a case (call it in the strategy's scope)."""
    kmm, keras, helpers = _modules()
    base = helpers.tiny_base_model()
    if case == "minmax_dict":
        # The same network written with dict outputs, the most common multi-task idiom.
        base = keras.Model(base.inputs, dict(zip(TASKS, base.outputs)))
    if case in ("minmax", "minmax_dict"):
        model = kmm.MinMaxMultiTask(base, step_size=0.1, gamma=1.0)
    elif case == "uncertainty":
        model = kmm.MultiTaskModel(base, weighting=kmm.UncertaintyWeighting())
    elif case == "dwa":
        model = kmm.MultiTaskModel(base, weighting=kmm.DynamicWeightAverage(0.5), scale="num_tasks")
    else:
        raise ValueError(f"Unknown case: {case!r}")
    model.compile(optimizer=keras.optimizers.SGD(lr), loss={t: helpers.LOSSES[t] for t in TASKS},
                  metrics={"a": ["accuracy"], "b": ["accuracy"]})
    return model


MIRRORED_CASES = ("minmax", "minmax_dict", "uncertainty", "dwa")


def _as_list(value):
    import numpy as np
    return np.asarray(value).tolist()


def _batch_logs(keras, store):
    keys = [f"{t}_{kind}" for t in TASKS for kind in ("loss", "weight")] + ["loss"]
    return keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: store.append({k: float(logs[k]) for k in keys}))


def _summary(model, history, batch_logs):
    """What the test compares: weights, state variables, logs, per-replica values."""
    import tensorflow as tf
    # Every variable of the model (network, weighting state, counters), not the
    # metrics' sync-on-read accumulators, which are per replica by design.
    state = [v for v in model.variables if v.synchronization != tf.VariableSynchronization.ON_READ]
    if len({v.name for v in state}) != len(state):
        raise ValueError(f"Variable names are not unique: {[v.name for v in state]}")
    return {
        "task_weights": _as_list(model.task_weights),
        "network": [_as_list(w) for w in model.base_model.get_weights()],
        "variables": {v.name: _as_list(v.numpy()) for v in state},
        # Each replica's copy of the distributed (mirrored) ones.
        "replicas": {v.name: [_as_list(c.numpy()) for c in v.values]
                     for v in state if hasattr(v, "values")},
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "batch_logs": batch_logs,
    }


def _fit(model, x, y, epochs):
    _, keras, _ = _modules()
    batch_logs = []
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=epochs, shuffle=False, verbose=0,
                        callbacks=[_batch_logs(keras, batch_logs)])
    return _summary(model, history, batch_logs)


def _global_batch_check(strategy):
    """A frozen step on a global batch whose replicas see losses of very different sizes.

    The network does not move (learning rate 0), so the losses computed by hand
    on the whole global batch, and on each replica's part of it, are the ones
    the step sees: rows 2-6, a batch of 5 that the replicas split unevenly
    (3 + 2 rows; rows 4-7 are much harder than rows 0-3). One step, not one
    even and one uneven: the uneven split is the case that a mean of the
    replicas' means would get wrong, and each step costs a retrace.
    """
    import numpy as np
    import tensorflow as tf
    _, _, helpers = _modules()
    x, y = helpers.tiny_data(n=GLOBAL_BATCH, seed=3)
    y["c"] = np.concatenate([np.zeros((4, 1)), np.full((4, 1), 2.0)]).astype(np.float32)
    with strategy.scope():
        model = build_model("minmax", lr=0.0)
    bx, by = x[2:7], {t: v[2:7] for t, v in y.items()}
    # How `fit` splits this global batch between the replicas.
    dataset = tf.data.Dataset.from_tensor_slices((bx, by)).batch(len(bx))
    split = next(iter(strategy.experimental_distribute_dataset(dataset)))
    sizes = [int(part.shape[0]) for part in strategy.experimental_local_results(split[0])]
    bounds = np.cumsum([0] + sizes)
    by_hand = {
        "global": _as_list(helpers.task_losses(model.base_model, bx, by)),
        "replicas": [_as_list(helpers.task_losses(model.base_model, bx[i:j],
                                                  {t: v[i:j] for t, v in by.items()}))
                     for i, j in zip(bounds[:-1], bounds[1:])],
    }
    weights_before = _as_list(model.task_weights)
    logged = _fit(model, bx, by, epochs=1)
    return {
        "num_replicas": strategy.num_replicas_in_sync,
        "replica_sizes": sizes,
        "by_hand": by_hand,
        "logged": {k: v[0] for k, v in logged["history"].items()},
        "evaluate": model.evaluate(bx, by, batch_size=len(bx), verbose=0, return_dict=True),
        "task_weights_before": weights_before,
        "task_weights_after": logged["task_weights"],
    }


def dst_run(strategy, x, y):
    """RigL on the tiny model under `strategy`: every replica's masks after each mask update."""
    import tensorflow_model_optimization as tfmot

    kmm, keras, helpers = _modules()
    from keras_minmax_mtl.sparsity import dst
    from keras_minmax_mtl.sparsity import pruning

    with strategy.scope():
        base = dst.prune_for_dst(helpers.tiny_base_model(), layer_names=["trunk", "a", "b", "c"])
        model = kmm.MinMaxMultiTask(base, step_size=0.1)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=helpers.LOSSES)
    callback = dst.DynamicSparseTraining(0.5, method="rigl", density="uniform", update_every=2,
                                         end_step=10, drop_fraction=0.5)
    snapshots = []

    def snapshot(batch, logs):
        step = int(model.optimizer.iterations.numpy())
        if callback.history and callback.history[-1]["step"] == step:
            masks = [[replica.numpy().tolist() for replica in getattr(mask, "values", [mask])]
                     for w in pruning.pruning_wrappers(model) for _, mask, _ in w.pruning_vars]
            snapshots.append({"step": callback.history[-1]["step"], "masks": masks})

    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), callback,
                         keras.callbacks.LambdaCallback(on_train_batch_end=snapshot)])
    return {"num_replicas": strategy.num_replicas_in_sync, "snapshots": snapshots,
            "initial_counts": callback.initial_counts, "history": callback.history}


def run_mirrored(path):
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    _, _, helpers = _modules()
    x, y = helpers.tiny_data(n=NUM_SAMPLES)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {}
    for case in MIRRORED_CASES:
        results[case] = {}
        for name, strategy in (("single", tf.distribute.get_strategy()), ("mirrored", mirrored)):
            with strategy.scope():
                model = build_model(case)
            results[case][name] = _fit(model, x, y, EPOCHS)
            results[case][name]["num_replicas"] = strategy.num_replicas_in_sync
    results["global_batch"] = _global_batch_check(mirrored)
    results["dst"] = {name: dst_run(strategy, x, y) for name, strategy in (
        ("single", tf.distribute.get_strategy()), ("mirrored", mirrored))}
    _write(path, results)


def multi_worker_dataset_fn(input_context):
    """The data of one worker: its slice of every global batch.

    Each worker builds the same global batches (`GLOBAL_BATCH` consecutive
    samples, in order) and keeps rows ``[i·b, (i+1)·b)`` of each, where ``i`` is
    its input pipeline (= worker) index and ``b`` the per-replica batch size.
    With one replica per worker, global batch `k` of the run is then, by
    construction, batch `k` of the single-process run, instead of depending on
    how tf.data's auto-sharding policy (FILE, falling back to DATA for
    in-memory data) and its rebatching combine.
    """
    import tensorflow as tf
    _, _, helpers = _modules()
    per_replica = input_context.get_per_replica_batch_size(GLOBAL_BATCH)
    if input_context.num_replicas_in_sync != input_context.num_input_pipelines:
        raise ValueError("This dataset function assumes one replica per worker.")
    start = input_context.input_pipeline_id * per_replica
    x, y = helpers.tiny_data(n=NUM_SAMPLES)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True)
    dataset = dataset.map(lambda *batch: tf.nest.map_structure(
        lambda t: t[start:start + per_replica], batch))
    return dataset.repeat()


def run_worker(path):
    import tensorflow as tf
    # Created before any other TensorFlow op: it starts this worker's server and
    # waits for the other worker. The collective timeout turns a lost peer into
    # an error instead of a hang.
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=180)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    _, keras, _ = _modules()
    with strategy.scope():
        model = build_model("minmax")
    batch_logs = []
    # `distribute_datasets_from_function`, through Keras' DatasetCreator: no
    # auto-sharding is applied; `multi_worker_dataset_fn` shards explicitly.
    data = keras.utils.experimental.DatasetCreator(multi_worker_dataset_fn)
    history = model.fit(data, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH,
                        verbose=0, callbacks=[_batch_logs(keras, batch_logs)])
    result = _summary(model, history, batch_logs)
    result["num_replicas"] = strategy.num_replicas_in_sync
    result["task"] = strategy.cluster_resolver.task_id
    _write(path, result)


def _write(path, results):
    with open(path + ".tmp", "w") as f:
        json.dump(results, f)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    {"mirrored": run_mirrored, "worker": run_worker}[mode](out)
