"""Dynamic sparse training under `MirroredStrategy` on two logical CPU devices, for `tests/test_dst.py`.

Run in a fresh process (logical devices must be configured before TensorFlow
initialises)::

    python tests/dst_distributed_run.py OUT.json

Trains the tiny test model with `DynamicSparseTraining(method="rigl")` twice from
the same weights and data: on the default strategy and under
`MirroredStrategy(["/cpu:0", "/cpu:1"])`, and writes, after every mask update,
each replica's copy of every mask and the update history.
"""
import json
import os
import sys


def main(path):
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests import helpers

    x, y = helpers.tiny_data(n=32)
    result = {}
    for name, strategy in (("single", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        result[name] = run(strategy, x, y)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def run(strategy, x, y):
    import tensorflow_model_optimization as tfmot

    import keras_minmax_mtl as kmm
    from keras_minmax_mtl.sparsity import dst
    from keras_minmax_mtl.sparsity import pruning
    from keras_minmax_mtl.core.backend import keras
    from tests import helpers

    with strategy.scope():
        base = dst.prune_for_dst(helpers.tiny_base_model(), layer_names=["trunk", "a", "b", "c"])
        model = kmm.MinMaxMultiTask(base, step_size=0.1)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=helpers.LOSSES)
    callback = dst.DynamicSparseTraining(0.5, method="rigl", density="uniform", update_every=2,
                                         end_step=10, drop_fraction=0.5)
    snapshots = []

    def snapshot(batch, logs):
        if callback.history and callback.history[-1]["step"] == int(model.optimizer.iterations.numpy()):
            masks = [[replica.numpy().tolist() for replica in getattr(mask, "values", [mask])]
                     for w in pruning.pruning_wrappers(model) for _, mask, _ in w.pruning_vars]
            snapshots.append({"step": callback.history[-1]["step"], "masks": masks})

    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), callback,
                         keras.callbacks.LambdaCallback(on_train_batch_end=snapshot)])
    return {"num_replicas": strategy.num_replicas_in_sync, "snapshots": snapshots,
            "initial_counts": callback.initial_counts, "history": callback.history}


if __name__ == "__main__":
    main(sys.argv[1])
