"""Small reference networks for the benchmarks of the package.

`multi_digits_network` builds the hard-parameter-sharing network used with
`keras_minmax_mtl.data.multi_digits`: a shared convolutional trunk and one
small dense head per task, as a Functional `tf_keras` model whose outputs are
named after the tasks.

Example:

>>> from keras_minmax_mtl.data.networks import multi_digits_network
>>> model = multi_digits_network(seed=0)
>>> model.output_names
['left', 'right', 'sum']
"""
from collections.abc import Mapping, Sequence

import numpy as np

from keras_minmax_mtl.core.checks import check_positive_int, is_int
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data import (
    CANVAS_COLS,
    CANVAS_ROWS,
    CIFAR100_CLASSES_PER_TASK,
    CIFAR100_IMAGE_SHAPE,
    CIFAR100_TASKS,
    MULTI_DIGITS_TASKS,
    NYUV2_NUM_CLASSES,
    cifar100_input_name,
)

from keras_minmax_mtl.data.fashion import MULTI_FASHION_CANVAS, MULTI_FASHION_TASKS

__all__ = ["multi_digits_network", "multi_fashion_network", "cifar100_mtl_network", "nyuv2_network"]


def _check_tasks(tasks):
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(
            "Argument `tasks` must be a non-empty mapping from task name to number "
            f"of classes, e.g. {MULTI_DIGITS_TASKS}. Received: tasks={tasks!r}"
        )
    checked = {}
    for task, n_classes in tasks.items():
        if not isinstance(task, str) or not task:
            raise ValueError(
                "Argument `tasks` must have non-empty string keys (the task names, "
                f"used as output layer names). Received the key {task!r} in "
                f"tasks={tasks!r}"
            )
        if not is_int(n_classes) or n_classes < 2:
            raise ValueError(
                "Argument `tasks` must map every task to an integer number of "
                f"classes >= 2. Received: tasks[{task!r}]={n_classes!r}"
            )
        checked[task] = int(n_classes)
    return checked


def _check_filters(trunk_filters):
    if (
        not isinstance(trunk_filters, Sequence)
        or isinstance(trunk_filters, str)
        or not trunk_filters
        or not all(is_int(f) and f > 0 for f in trunk_filters)
    ):
        raise ValueError(
            "Argument `trunk_filters` must be a non-empty sequence of positive "
            f"integers (one Conv2D layer each). Received: trunk_filters={trunk_filters!r}"
        )
    return tuple(int(f) for f in trunk_filters)


def multi_digits_network(
    tasks=MULTI_DIGITS_TASKS,
    trunk_filters=(16, 32),
    trunk_units=64,
    head_units=32,
    seed=0,
    name="multi_digits_net",
):
    """Builds a shared-trunk, multi-head classifier for MultiDigits canvases.

    Architecture: `Input((12, 16, 1), name="image")`, then the shared trunk,
    one `Conv2D(f, 3, activation="relu", padding="same")` per entry of
    `trunk_filters` (named `trunk_conv1`, `trunk_conv2`, ...),
    `MaxPooling2D(2)` (`trunk_pool`), `Flatten` (`trunk_flatten`) and
    `Dense(trunk_units, activation="relu")` (`trunk_dense`); then, for each
    task in order, `Dense(head_units, activation="relu")` named
    `f"{task}_hidden"` and `Dense(n_classes, activation="softmax")` named
    `task`. The model's `output_names` are thus the task names, in order, so
    it trains directly on `(x, {task: labels})` data with one
    `sparse_categorical_crossentropy` loss per output.

    Kernels use Glorot-uniform initializers whose seeds are derived from
    `seed` and the layer's position, and biases start at zero: the same
    arguments always give identical weights.

    Args:
        tasks: mapping from task name to number of classes (>= 2), in output
            order. Defaults to `MULTI_DIGITS_TASKS`
            (`{"left": 10, "right": 10, "sum": 19}`).
        trunk_filters: non-empty sequence of positive filter counts, one
            3x3 convolution each. Defaults to `(16, 32)`.
        trunk_units: positive width of the shared dense layer. Defaults to
            `64`.
        head_units: positive width of each task's hidden layer. Defaults to
            `32`.
        seed: non-negative integer seed of the initial weights. Defaults to
            `0`.
        name: name of the model. Defaults to `"multi_digits_net"`.

    Returns:
        An uncompiled Functional `keras.Model` (from `tf_keras`) with one
        input `"image"` of shape `(None, 12, 16, 1)` and one softmax output
        per task, of shape `(None, n_classes)`.

    Raises:
        ValueError: if `tasks` is empty or malformed, a task name collides
            with another layer's name, `trunk_filters`, `trunk_units` or
            `head_units` is not positive, or `seed` is not a non-negative
            integer.

    Example:

    >>> from keras_minmax_mtl.core.backend import keras
    >>> model = multi_digits_network(seed=0)
    >>> model.compile(
    ...     optimizer=keras.optimizers.Adam(1e-3),
    ...     loss={task: "sparse_categorical_crossentropy" for task in model.output_names},
    ...     metrics={task: "accuracy" for task in model.output_names},
    ... )
    >>> [tuple(o.shape) for o in model.outputs]
    [(None, 10), (None, 10), (None, 19)]
    """
    tasks = _check_tasks(tasks)
    trunk_filters = _check_filters(trunk_filters)
    trunk_units = check_positive_int(trunk_units, "trunk_units")
    head_units = check_positive_int(head_units, "head_units")
    if not is_int(seed) or seed < 0:
        raise ValueError(
            f"Argument `seed` must be a non-negative integer. Received: seed={seed!r}"
        )
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"Argument `name` must be a non-empty string. Received: name={name!r}"
        )

    conv_names = [f"trunk_conv{i + 1}" for i in range(len(trunk_filters))]
    trunk_names = ["image", *conv_names, "trunk_pool", "trunk_flatten", "trunk_dense"]
    head_names = [n for task in tasks for n in (f"{task}_hidden", task)]
    all_names = trunk_names + head_names
    duplicates = sorted({n for n in all_names if all_names.count(n) > 1})
    if duplicates:
        raise ValueError(
            "Argument `tasks` has task names that collide with other layer names "
            f"{duplicates}: a task named T gets the layers 'T_hidden' and 'T', and the "
            f"trunk uses {trunk_names}. Received: tasks={tasks!r}"
        )

    # One independent 31-bit seed per kernel, derived from `seed`.
    n_kernels = len(trunk_filters) + 1 + 2 * len(tasks)
    kernel_seeds = iter(
        int(s) for s in np.random.SeedSequence(int(seed)).generate_state(n_kernels) >> 1
    )

    def init():
        return keras.initializers.GlorotUniform(seed=next(kernel_seeds))

    inputs = keras.Input(shape=(CANVAS_ROWS, CANVAS_COLS, 1), name="image")
    h = inputs
    for filters, layer_name in zip(trunk_filters, conv_names):
        h = keras.layers.Conv2D(
            filters, 3, activation="relu", padding="same",
            kernel_initializer=init(), name=layer_name,
        )(h)
    h = keras.layers.MaxPooling2D(2, name="trunk_pool")(h)
    h = keras.layers.Flatten(name="trunk_flatten")(h)
    shared = keras.layers.Dense(
        trunk_units, activation="relu", kernel_initializer=init(), name="trunk_dense"
    )(h)

    outputs = []
    for task, n_classes in tasks.items():
        z = keras.layers.Dense(
            head_units, activation="relu", kernel_initializer=init(),
            name=f"{task}_hidden",
        )(shared)
        outputs.append(
            keras.layers.Dense(
                n_classes, activation="softmax", kernel_initializer=init(), name=task
            )(z)
        )
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def multi_fashion_network(trunk_filters=(16, 32), trunk_units=64, head_units=32, seed=0,
                          name="multi_fashion_net"):
    """The hard-parameter-sharing network of `keras_minmax_mtl.data.fashion.multi_fashion`.

    A trunk of 3x3 convolutions, each followed by 2x2 max pooling, and a shared
    dense layer; per task a hidden dense layer and an output layer named after
    the task: a 10-way softmax for `"left"` and `"right"`, one linear unit for
    the `"ink"` regression (`MULTI_FASHION_TASKS`).

    Args:
        trunk_filters: positive filter counts, one convolution each. Defaults to `(16, 32)`.
        trunk_units: width of the shared dense layer. Defaults to `64`.
        head_units: width of each task's hidden layer. Defaults to `32`.
        seed: non-negative seed of the initial weights. Defaults to `0`.
        name: the model's name.

    Example:

    >>> model = multi_fashion_network(seed=0)
    >>> model.output_names, [tuple(o.shape) for o in model.outputs]
    (['left', 'right', 'ink'], [(None, 10), (None, 10), (None, 1)])
    """
    trunk_filters = _check_filters(trunk_filters)
    trunk_units = check_positive_int(trunk_units, "trunk_units")
    head_units = check_positive_int(head_units, "head_units")
    init = _seeded_initializers(seed, len(trunk_filters) + 1 + 2 * len(MULTI_FASHION_TASKS))
    inputs = keras.Input(shape=(MULTI_FASHION_CANVAS, MULTI_FASHION_CANVAS, 1), name="image")
    h = inputs
    for i, filters in enumerate(trunk_filters):
        h = keras.layers.Conv2D(filters, 3, activation="relu", padding="same",
                                kernel_initializer=init(), name=f"trunk_conv{i + 1}")(h)
        h = keras.layers.MaxPooling2D(2, name=f"trunk_pool{i + 1}")(h)
    h = keras.layers.Flatten(name="trunk_flatten")(h)
    shared = keras.layers.Dense(trunk_units, activation="relu", kernel_initializer=init(),
                                name="trunk_dense")(h)
    outputs = []
    for task, classes in MULTI_FASHION_TASKS.items():
        z = keras.layers.Dense(head_units, activation="relu", kernel_initializer=init(),
                               name=f"{task}_hidden")(shared)
        outputs.append(keras.layers.Dense(
            1 if classes is None else classes, activation=None if classes is None else "softmax",
            kernel_initializer=init(), name=task)(z))
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def _seeded_initializers(seed, count):
    if not is_int(seed) or seed < 0:
        raise ValueError(
            f"Argument `seed` must be a non-negative integer. Received: seed={seed!r}"
        )
    seeds = iter(int(s) for s in np.random.SeedSequence(int(seed)).generate_state(count) >> 1)
    return lambda: keras.initializers.GlorotUniform(seed=next(seeds))


def cifar100_mtl_network(tasks=CIFAR100_TASKS, trunk_filters=(32, 64), trunk_units=128,
                         head_units=64, seed=0, name="cifar100_mtl_net"):
    """Builds the multi-input, shared-trunk network of multi-task CIFAR-100.

    One input per task, `cifar100_input_name(task)` of shape `(32, 32, 3)`;
    the *same* trunk layers (`Conv2D(f, 3, relu, same)` + `MaxPooling2D(2)`
    per entry of `trunk_filters`, named `trunk_conv{i}` / `trunk_pool{i}`,
    then `Flatten` and `Dense(trunk_units, relu)` named `trunk_dense`) are
    applied to every input, so the trunk's weights are shared while each task
    sees only its own batch (`keras_minmax_mtl.data.cifar100_mtl`); then
    per task `Dense(head_units, relu)` (`f"{task}_hidden"`) and a 5-way
    softmax named `task`. The output names are the task names.

    Args:
        tasks: the task names. Defaults to `CIFAR100_TASKS` (20 superclasses).
        trunk_filters: filters of the trunk's convolutions. Defaults to `(32, 64)`.
        trunk_units: width of the shared dense layer. Defaults to `128`.
        head_units: width of each task's hidden layer. Defaults to `64`.
        seed: non-negative seed of the initial weights. Defaults to `0`.
        name: Defaults to `"cifar100_mtl_net"`.

    Returns:
        An uncompiled Functional `tf_keras` model.

    Example:

    >>> model = cifar100_mtl_network(seed=0)
    >>> model.output_names[:2], model.input_names[0]
    (['aquatic_mammals', 'fish'], 'aquatic_mammals_image')
    """
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"Argument `tasks` must be a non-empty sequence of task names. "
                         f"Received: tasks={tasks!r}")
    tasks = tuple(tasks)
    trunk_filters = _check_filters(trunk_filters)
    trunk_units = check_positive_int(trunk_units, "trunk_units")
    head_units = check_positive_int(head_units, "head_units")
    init = _seeded_initializers(seed, len(trunk_filters) + 1 + 2 * len(tasks))
    trunk = []
    for i, filters in enumerate(trunk_filters):
        trunk.append(keras.layers.Conv2D(filters, 3, activation="relu", padding="same",
                                         kernel_initializer=init(), name=f"trunk_conv{i + 1}"))
        trunk.append(keras.layers.MaxPooling2D(2, name=f"trunk_pool{i + 1}"))
    trunk.append(keras.layers.Flatten(name="trunk_flatten"))
    trunk.append(keras.layers.Dense(trunk_units, activation="relu", kernel_initializer=init(),
                                    name="trunk_dense"))
    inputs, outputs = [], []
    heads = [(keras.layers.Dense(head_units, activation="relu", kernel_initializer=init(),
                                 name=f"{t}_hidden"),
              keras.layers.Dense(CIFAR100_CLASSES_PER_TASK, activation="softmax",
                                 kernel_initializer=init(), name=t)) for t in tasks]
    for task, (hidden, out) in zip(tasks, heads):
        x = keras.Input(CIFAR100_IMAGE_SHAPE, name=cifar100_input_name(task))
        h = x
        for layer in trunk:
            h = layer(h)
        inputs.append(x)
        outputs.append(out(hidden(h)))
    return keras.Model(inputs, outputs, name=name)


def nyuv2_network(input_shape=(288, 384, 3), filters=(16, 32), seed=0, name="nyuv2_net"):
    """Builds a tiny encoder-decoder for NYUv2 with three heads.

    Encoder: per entry of `filters`, `Conv2D(f, 3, relu, same)` then
    `MaxPooling2D(2)` (`trunk_conv{i}`, `trunk_pool{i}`); decoder: per entry,
    in reverse, `UpSampling2D(2)` then `Conv2D(f, 3, relu, same)`
    (`trunk_up{i}`, `trunk_deconv{i}`). Heads (each a `Conv2D(16, 3, relu)`
    `f"{task}_hidden"` then): `segmentation` = `Conv2D(13, 1, softmax)`,
    `depth` = `Conv2D(1, 1)`, `normal` = `Conv2D(3, 1)` (`normal_conv`) then
    `UnitNormalization` named `normal`. Height and width must be divisible
    by ``2 ** len(filters)``.

    Args:
        input_shape: `(H, W, 3)`. Defaults to `(288, 384, 3)`.
        filters: encoder widths. Defaults to `(16, 32)`.
        seed: non-negative seed of the initial weights. Defaults to `0`.
        name: Defaults to `"nyuv2_net"`.

    Returns:
        An uncompiled Functional `tf_keras` model with input `"image"` and
        outputs `["segmentation", "depth", "normal"]`.

    Example:

    >>> nyuv2_network((32, 32, 3)).output_names
    ['segmentation', 'depth', 'normal']
    """
    filters = _check_filters(filters)
    factor = 2 ** len(filters)
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or input_shape[2] != 3 or any(not is_int(d) or d <= 0 or d % factor
                                          for d in input_shape[:2])):
        raise ValueError(f"Argument `input_shape` must be (H, W, 3) with H and W positive "
                         f"multiples of {factor}. Received: input_shape={input_shape!r}")
    init = _seeded_initializers(seed, 2 * len(filters) + 6)
    x = keras.Input(tuple(input_shape), name="image")
    h = x
    for i, f in enumerate(filters):
        h = keras.layers.Conv2D(f, 3, activation="relu", padding="same",
                                kernel_initializer=init(), name=f"trunk_conv{i + 1}")(h)
        h = keras.layers.MaxPooling2D(2, name=f"trunk_pool{i + 1}")(h)
    for i, f in enumerate(reversed(filters)):
        h = keras.layers.UpSampling2D(2, name=f"trunk_up{i + 1}")(h)
        h = keras.layers.Conv2D(f, 3, activation="relu", padding="same",
                                kernel_initializer=init(), name=f"trunk_deconv{i + 1}")(h)

    def hidden(task):
        return keras.layers.Conv2D(16, 3, activation="relu", padding="same",
                                   kernel_initializer=init(), name=f"{task}_hidden")(h)

    seg = keras.layers.Conv2D(NYUV2_NUM_CLASSES, 1, activation="softmax",
                              kernel_initializer=init(), name="segmentation")(hidden("segmentation"))
    depth = keras.layers.Conv2D(1, 1, kernel_initializer=init(), name="depth")(hidden("depth"))
    normal = keras.layers.Conv2D(3, 1, kernel_initializer=init(), name="normal_conv")(hidden("normal"))
    normal = keras.layers.UnitNormalization(axis=-1, name="normal")(normal)
    return keras.Model(x, [seg, depth, normal], name=name)
