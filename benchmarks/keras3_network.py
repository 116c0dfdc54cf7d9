"""Not a script: the MultiDigits network of `keras_minmax_mtl.data.multi_digits_network`, built with Keras 3.

The Keras 3 benchmarks (`keras3_step_time.py`, `keras3_digits.py`) need the
tf_keras path's network in `import keras`: the same layers, names, shapes and
order (so `get_weights()` lists match one to one), from
`keras_minmax_mtl.data.multi_digits_network`'s documented architecture.
"""
import numpy as np

TASKS = {"left": 10, "right": 10, "sum": 19}  # keras_minmax_mtl.data.MULTI_DIGITS_TASKS


def network(seed=0, trunk_filters=(16, 32), trunk_units=64, head_units=32, tasks=TASKS):
    """The Functional Keras 3 model; weights Glorot-uniform from a seeded numpy generator, biases 0."""
    import keras
    from keras import layers

    inputs = keras.Input((12, 16, 1), name="image")
    h = inputs
    for i, filters in enumerate(trunk_filters, 1):
        h = layers.Conv2D(filters, 3, activation="relu", padding="same", name=f"trunk_conv{i}")(h)
    h = layers.MaxPooling2D(2, name="trunk_pool")(h)
    h = layers.Flatten(name="trunk_flatten")(h)
    h = layers.Dense(trunk_units, activation="relu", name="trunk_dense")(h)
    outputs = []
    for task, classes in tasks.items():
        t = layers.Dense(head_units, activation="relu", name=f"{task}_hidden")(h)
        outputs.append(layers.Dense(classes, activation="softmax", name=task)(t))
    model = keras.Model(inputs, outputs, name="multi_digits_net")
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.get_weights():
        if w.ndim == 1:
            weights.append(np.zeros_like(w))
        else:
            fan_in, fan_out = int(np.prod(w.shape[:-1])), w.shape[-1]
            if w.ndim == 4:  # conv kernel (kh, kw, in, out)
                fan_in, fan_out = int(np.prod(w.shape[:-1])), int(np.prod(w.shape[:2])) * w.shape[-1]
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            weights.append(rng.uniform(-limit, limit, w.shape).astype("float32"))
    model.set_weights(weights)
    return model
