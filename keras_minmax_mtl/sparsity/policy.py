r"""`MultiTaskPruningPolicy`: which layers to prune, decided by their role in a multi-task graph.

A Functional multi-task network has three kinds of weighted layers:

- **trunk** (shared) layers: every task output depends on them;
- **task-hidden** layers: only some of the task outputs depend on them, and
  they are not outputs themselves;
- **task-output** layers: the final layer of a task (an output of the model).

The paper (Guo et al., 2025) prunes the trunk and the task-specific hidden
layers and keeps the final task layers dense; that is the default here. The
policy plugs into tfmot like its own policies:

>>> policy = MultiTaskPruningPolicy()                   # trunk + task hidden
>>> wrapped = tfmot.sparsity.keras.prune_low_magnitude(
...     base, pruning_schedule=schedule, pruning_policy=policy)
>>> policy.roles["trunk_dense"], policy.roles["left"]
('trunk', 'task_output')

`ensure_model_supports_pruning(model)` (tfmot calls it first) reads the graph
and records the roles; `allow_pruning(layer)` then answers by the layer's name.
Only layers tfmot can prune and that hold prunable weights (kernels) are ever
allowed; layers without weights (pooling, flatten) are left unwrapped.

`XNNPackSparsePolicy` narrows it to the 1×1 convolutions of a MobileNet-shaped
trunk, the only sparsity that makes a float file faster on phones (XNNPack's
sparse inference; `docs/export.md`).
"""
import numpy as np
from tensorflow_model_optimization.python.core.sparsity.keras.prunable_layer import (
    PrunableLayer,
)
from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
    PruneRegistry,
)
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_policy import (
    PruneForLatencyOnXNNPack,
    PruningPolicy,
)

from keras_minmax_mtl.core.backend import keras, require_tf_keras_model

__all__ = ["ancestors", "is_prunable", "MultiTaskPruningPolicy", "XNNPackSparsePolicy",
           "XNNPACK_MIN_SPARSITY", "is_one_by_one_conv", "ROLES", "layer_roles",
           "prunable_kernel_count",
           "head_kernel_count", "refuse_nested_models"]

#: The roles a layer can have in a multi-task graph.
ROLES = ("trunk", "task_hidden", "task_output")


def _inbound_layers(layer):
    """The layers whose outputs `layer` consumes, over all the nodes it was called at."""
    found = []
    for node in layer._inbound_nodes:
        inbound = node.inbound_layers
        found.extend(inbound if isinstance(inbound, (list, tuple)) else [inbound])
    return found


def ancestors(layer):
    """`layer` and every layer it depends on (by identity)."""
    seen, stack = {}, [layer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen[id(current)] = current
        stack.extend(_inbound_layers(current))
    return seen


def _inner_layers(layer):
    """The layers of a nested model, recursively (not the model itself)."""
    for child in getattr(layer, "layers", None) or []:
        yield child
        if isinstance(child, keras.Model):
            yield from _inner_layers(child)


def layer_roles(model):
    """`{layer name: role}` for every layer of the Functional `model` that holds weights.

    A layer is `"task_output"` if it produces one of the model's outputs,
    `"trunk"` if every output depends on it, and `"task_hidden"` otherwise.
    The layers of a nested model take the role of the nested model.

    Raises:
        TypeError: for Keras 3, subclassed or unbuilt models (see
            `MultiTaskPruningPolicy.ensure_model_supports_pruning`).
    """
    _check_model(model)
    output_layers = [tensor._keras_history.layer for tensor in model.outputs]
    dependants = {}
    for output in output_layers:
        for key in ancestors(output):
            dependants.setdefault(key, set()).add(id(output))
    output_ids = {id(layer) for layer in output_layers}
    roles = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        if id(layer) in output_ids:
            role = "task_output"
        elif len(dependants.get(id(layer), ())) == len(output_ids):
            role = "trunk"
        else:
            role = "task_hidden"
        roles[layer.name] = role
        for inner in _inner_layers(layer):
            if inner.weights:
                roles[inner.name] = role
    return roles


def _check_model(model):
    require_tf_keras_model(model, "model")
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(
            f"Argument `model` must be built (its weights created) before pruning. Received "
            f"the unbuilt model {model.name!r}: give its first layer an input shape or call it "
            f"once."
        )
    if not getattr(model, "_is_graph_network", False):
        raise TypeError(
            "`MultiTaskPruningPolicy` needs a Functional `tf_keras` model, whose graph tells "
            "which layers every task depends on; tfmot cannot prune subclassed models either. "
            f"Received a subclassed model of class {type(model).__name__}. Build the network "
            "with `keras.Model(inputs, outputs)`, prune it, then wrap it in `MinMaxMultiTask`."
        )
    if not model.built:
        raise ValueError(
            f"Argument `model` must be built (its weights created) before pruning. Received "
            f"the unbuilt model {model.name!r}: give its `Input` a shape or call it once."
        )


def is_prunable(layer):
    """Whether tfmot can wrap `layer` and the wrapper would prune a weight: the package's one rule.

    True for a tfmot `PrunableLayer` (or any layer with `get_prunable_weights`,
    e.g. the hybrid layers) and for a built layer of tfmot's registry whose
    entry names prunable weights (Dense, Conv1D/2D/3D and their transposes,
    SeparableConv1D/2D, Embedding, LocallyConnected, the RNN layers through
    their cells, MultiHeadAttention). False for nested models (their layers
    are asked one by one), for layers without weights (pooling, flatten) and
    for registry entries without prunable weights: `DepthwiseConv2D` and
    `BatchNormalization`, so a MobileNet trunk's depthwise kernels stay dense.
    `MultiTaskPruningPolicy` (reweighted ℓ1, task-aware, hybrid) and
    `dst.prune_for_dst` both decide by it.

    Example:

    >>> dense, depthwise = keras.layers.Dense(2), keras.layers.DepthwiseConv2D(3)
    >>> dense.build((None, 4)); depthwise.build((None, 8, 8, 4))
    >>> is_prunable(dense), is_prunable(depthwise)
    (True, False)
    """
    if isinstance(layer, PrunableLayer) or hasattr(layer, "get_prunable_weights"):
        return True
    if isinstance(layer, keras.Model) or not PruneRegistry.supports(layer):
        return False
    try:
        names = PruneRegistry._weight_names(layer)
    except KeyError:  # RNN layers: supported through their cells, which have kernels
        return bool(layer.weights)
    return bool(names) and bool(layer.weights)


class MultiTaskPruningPolicy(PruningPolicy):
    """Prunes layers by their role in a multi-task graph (a tfmot `PruningPolicy`).

    Args:
        prune: the roles to prune, a subset of `("trunk", "task_hidden",
            "task_output")`. Defaults to `("trunk", "task_hidden")`: the
            final task layers stay dense, as in the paper.
        exclude: names of layers never to prune, whatever their role.
            Defaults to `()`.

    Attributes:
        roles: `{layer name: role}` of the last model given to
            `ensure_model_supports_pruning`.

    Example:

    >>> policy = MultiTaskPruningPolicy(prune=("trunk",))
    >>> wrapped = tfmot.sparsity.keras.prune_low_magnitude(
    ...     base, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.9, 0),
    ...     pruning_policy=policy)
    """

    def __init__(self, prune=("trunk", "task_hidden"), exclude=()):
        if isinstance(prune, str):
            prune = (prune,)
        prune = tuple(prune)
        unknown = [role for role in prune if role not in ROLES]
        if not prune or unknown:
            raise ValueError(
                f"Argument `prune` must be a non-empty collection of roles among {list(ROLES)}. "
                f"Received: prune={prune!r}"
            )
        if isinstance(exclude, str):
            exclude = (exclude,)
        self.prune = prune
        self.exclude = tuple(exclude)
        self.roles = None

    def ensure_model_supports_pruning(self, model):
        """Reads the roles of `model`'s layers and checks that something is left to prune.

        Raises:
            TypeError: for Keras 3 models and subclassed models.
            ValueError: for unbuilt models, and when the policy leaves no
                layer of `model` to prune (the message lists the roles found).
        """
        roles = layer_roles(model)
        self.roles = roles
        chosen = self.prunable_layer_names(model)
        if not chosen:
            raise ValueError(
                f"This `MultiTaskPruningPolicy(prune={self.prune!r}, exclude={self.exclude!r})` "
                f"leaves no layer of model {model.name!r} to prune. Roles of its prunable "
                f"layers: {self._prunable_roles(model)}. Choose other roles or exclude fewer "
                f"layers."
            )

    def _prunable_roles(self, model):
        layers = {layer.name: layer for layer in model.layers}
        for layer in list(layers.values()):
            layers.update({inner.name: inner for inner in _inner_layers(layer)})
        return {name: role for name, role in self.roles.items()
                if name in layers and is_prunable(layers[name])}

    def prunable_layer_names(self, model):
        """The names of the layers of `model` this policy prunes (after `ensure_...`)."""
        return sorted(name for name, role in self._prunable_roles(model).items()
                      if role in self.prune and name not in self.exclude)

    def allow_pruning(self, layer):
        """Whether to wrap `layer`: its role is one of `prune` and it has prunable weights.

        Raises:
            RuntimeError: if `ensure_model_supports_pruning` was not called first
                (tfmot's `prune_low_magnitude` calls it).
        """
        if self.roles is None:
            raise RuntimeError(
                "`MultiTaskPruningPolicy.allow_pruning` needs the model's graph: call "
                "`ensure_model_supports_pruning(model)` first (tfmot's `prune_low_magnitude` "
                "does so when given `pruning_policy=`)."
            )
        role = self.roles.get(layer.name)
        return (role in self.prune and layer.name not in self.exclude
                and is_prunable(layer))


#: The zero fraction of the 1×1 convolution kernels (all of them together) from which XNNPack
#: runs a float graph's sparse subgraph with its sparse kernels (its README, "Sparse Inference").
XNNPACK_MIN_SPARSITY = 2 / 3


def is_one_by_one_conv(layer):
    """Whether `layer` is a 1×1 `Conv2D` XNNPack's sparse kernels run: stride 1, no dilation, 1 group.

    Example:

    >>> is_one_by_one_conv(keras.layers.Conv2D(8, 1)), is_one_by_one_conv(keras.layers.Conv2D(8, 3))
    (True, False)
    """
    return (type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1)
            and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
            and layer.groups == 1)


def _layers_by_name(model):
    layers = {layer.name: layer for layer in model.layers}
    for layer in list(layers.values()):
        layers.update({inner.name: inner for inner in _inner_layers(layer)})
    return layers


class XNNPackSparsePolicy(MultiTaskPruningPolicy):
    """Prunes only the 1×1 convolutions of the trunk: sparsity that XNNPack runs faster.

    XNNPack, LiteRT's CPU delegate on phones, has sparse kernels for one case
    only (Elsen et al., *Fast Sparse ConvNets*, CVPR 2020): float32/float16
    1×1 convolutions in a subgraph that it can run channels-first, with at
    least `XNNPACK_MIN_SPARSITY` (2/3) of the 1×1 kernels' weights zero. A
    1×1 convolution over an H×W×C_in map is the product
    ``Y (HW × C_out) = X (HW × C_in) · W (C_in × C_out)``; with a fraction
    `s` of `W` zero, XNNPack's sparse kernel does about `(1 − s)` of the
    multiply-adds. Everything else (3×3 and depthwise kernels, Dense layers,
    int8 files) is densified when the interpreter is built and runs at the
    dense speed, so pruning it makes the file smaller but not faster.

    The subgraph must (tfmot's `PruneForLatencyOnXNNPack` checks these
    rules, and this policy applies them, then the multi-task roles):

    - start with `ZeroPadding2D(1)` and a `Conv2D` 3x3, stride 2, `padding="valid"`
      on the 3-channel input (a `"same"` stride-2 convolution of an even-sized
      input pads unevenly, which XNNPack runs dense: so do
      `tf_keras.applications.MobileNetV2`'s stem and its stride-2 blocks);
    - end with `GlobalAveragePooling2D(keepdims=True)` on every output branch
      (the task heads come after it);
    - hold only 1×1 `Conv2D`, `DepthwiseConv2D` 3x3 or 5x5 (`"same"` at stride 1, or
      `ZeroPadding2D(1 or 2)` + `"valid"`), `BatchNormalization`, `Add`,
      `Multiply`, `ReLU`/`ReLU6`/`LeakyReLU`/`ELU`/sigmoid, `Dropout` in between.

    Args:
        prune: the roles whose 1×1 convolutions are pruned, a subset of
            `("trunk", "task_hidden", "task_output")`. Defaults to
            `("trunk", "task_hidden")`.
        exclude: names of layers never to prune. Defaults to `()`.

    Example:

    >>> policy = XNNPackSparsePolicy()
    >>> wrapped = tfmot.sparsity.keras.prune_low_magnitude(
    ...     base, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.9, 0),
    ...     pruning_policy=policy)                       # 1×1 Conv2D layers only
    >>> export_tflite(stripped, "phone.tflite", target="mobile")   # float, stored sparse
    """

    def ensure_model_supports_pruning(self, model):
        """Checks XNNPack's sparse-subgraph rules, then reads the roles (see the class).

        Raises:
            TypeError: for Keras 3 models and subclassed models.
            ValueError: a graph XNNPack would run dense (the message gives
                tfmot's reason and the rules), or no 1×1 convolution left to
                prune.
        """
        _check_model(model)
        try:
            PruneForLatencyOnXNNPack().ensure_model_supports_pruning(model)
        except ValueError as error:
            raise ValueError(
                f"`XNNPackSparsePolicy` prunes only graphs XNNPack's sparse path runs, and model "
                f"{model.name!r} is not one (XNNPack would densify its weights, so pruning would "
                "not make it faster). The rules: the input goes through ZeroPadding2D(1) and a "
                "Conv2D 3x3, stride 2, padding 'valid' with 3 input channels; every output "
                "branch passes a GlobalAveragePooling2D(keepdims=True); in between only 1x1 "
                "Conv2D, 3x3/5x5 DepthwiseConv2D ('same' at stride 1, or ZeroPadding2D + "
                "'valid'), BatchNormalization, Add, Multiply, ReLU-type activations. "
                "tf_keras.applications.MobileNetV2 fails the first rule ('same' padding of "
                f"its stride-2 convolutions). tfmot: {error}") from error
        super().ensure_model_supports_pruning(model)

    def prunable_layer_names(self, model):
        """The names of the 1×1 convolutions of `model` this policy prunes (after `ensure_...`)."""
        layers = _layers_by_name(model)
        return [name for name in super().prunable_layer_names(model)
                if is_one_by_one_conv(layers[name])]

    def allow_pruning(self, layer):
        """Whether to wrap `layer`: a 1×1 `Conv2D` whose role is one of `prune`."""
        return super().allow_pruning(layer) and is_one_by_one_conv(layer)


def _kernel_count(model, names):
    layers = {id(layer): layer for top in model.layers for layer in [top, *_inner_layers(top)]}
    return int(sum(np.prod(layer.kernel.shape) for layer in layers.values()
                   if layer.name in names and getattr(layer, "kernel", None) is not None))


def refuse_nested_models(model, method, argument="base_model"):
    """Raises `ValueError` naming the first nested model of `model`, for methods that cannot enter one.

    A trunk built as its own Functional or Sequential model and called as a
    layer (``h = trunk(inputs)``, e.g. a `tf_keras.applications` backbone)
    hides its layers behind one layer of the outer graph. `method` names
    the strategy in the message, which says the way out: build the trunk's
    layers in the outer graph (for an application,
    ``keras.applications.MobileNetV2(input_tensor=inputs, ...)`` and its
    `output`).
    """
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = [child.name for child in _inner_layers(layer) if child.weights]
            raise ValueError(
                f"{method} does not enter nested models: layer {layer.name!r} of argument "
                f"`{argument}` ({model.name!r}) is a nested {type(layer).__name__} model, whose "
                f"layers {inner[:5] + (['...'] if len(inner) > 5 else [])} it would not reach. "
                f"Build the trunk in the outer graph instead: call its layers on the outer "
                f"tensors, or for a `tf_keras.applications` model pass `input_tensor=inputs` and "
                f"use its `.output`. (Reweighted l1 and dynamic sparse training do enter nested "
                f"models.)")


def prunable_kernel_count(base_model, policy=None):
    """The number of kernel weights `policy` prunes in `base_model` (trunk + task-hidden by default).

    With `head_kernel_count`, the sizes behind the equal-non-zero budgets of
    the task-aware and hybrid strategies.

    Args:
        base_model: a Functional model.
        policy: a `MultiTaskPruningPolicy`. Defaults to `MultiTaskPruningPolicy()`,
            which reweighted ℓ1 uses.
    """
    policy = MultiTaskPruningPolicy() if policy is None else policy
    policy.ensure_model_supports_pruning(base_model)
    return _kernel_count(base_model, set(policy.prunable_layer_names(base_model)))


def head_kernel_count(base_model):
    """The number of kernel weights of `base_model`'s output layers (the task heads, kept dense)."""
    return _kernel_count(base_model, set(base_model.output_names))
