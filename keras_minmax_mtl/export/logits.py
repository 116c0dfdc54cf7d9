r"""Task heads that output logits: a copy of a Functional model without its final softmax.

A classification head usually ends with a softmax,
``p_k = exp(z_k) / Σ_j exp(z_j)``. Softmax is monotone, so
``argmax_k p_k = argmax_k z_k``: dropping it keeps every top-1 decision of
the float model. It matters after full-int8 quantization: a softmax output
is stored with the fixed step 1/256, so when the two best classes of an
unsure head differ by less than that (for ``C`` classes with nearly flat
probabilities, ``p ≈ 1/C`` and a logit gap ``Δz`` gives ``Δp ≈ Δz/C``), they
tie in int8 and the argmax takes the lowest index. The logits are quantized
with a step of ``(z_max − z_min)/255`` over their calibrated range, which is
fine relative to the gap between the top classes.

`without_softmax` recognises a final softmax in the layer that produces a
model output:

- a layer with `activation="softmax"` (e.g. `Dense`), also inside a tfmot
  quantization wrapper (`QuantizeAwareActivation(softmax)`): rebuilt with
  `activation="linear"`;
- a `Softmax` layer or an `Activation("softmax")` layer: replaced by
  `Activation("linear")` with the same name.

The output layers keep their names, so outputs stay keyed by task name.

Example:

>>> copy, forms = without_softmax(base_model)   # base_model is not changed
>>> forms
{'left': 'logits', 'right': 'logits', 'sum': 'logits'}
"""
import numpy as np

from keras_minmax_mtl.core.backend import keras, require_functional

__all__ = ["custom_scope", "unwrapped", "without_softmax", "softmax_outputs", "logit_floors", "floorable_outputs",
           "OUTPUT_FORMS"]

#: Values of `export_tflite(..., outputs=...)`.
OUTPUT_FORMS = ("probabilities", "logits")


def unwrapped(layer):
    """The layer inside any wrappers (pruning, quantization) around `layer`."""
    while isinstance(layer, keras.layers.Wrapper):
        layer = layer.layer
    return layer


def _activation_name(config):
    """The activation's name in a layer config, looking through `QuantizeAwareActivation`."""
    activation = config.get("activation")
    if isinstance(activation, dict):
        if activation.get("class_name") == "QuantizeAwareActivation":
            activation = activation["config"]["activation"]
        else:
            activation = activation.get("config", {}).get("name", activation.get("class_name"))
    return activation if isinstance(activation, str) else None


def _final_softmax(layer):
    """How `layer` ends with a softmax: `"activation"`, `"layer"` or `None`."""
    inner = unwrapped(layer)
    if isinstance(inner, keras.layers.Softmax):
        return "layer"
    if isinstance(inner, keras.layers.Activation):
        return "layer" if _activation_name(inner.get_config()) == "softmax" else None
    if _activation_name(inner.get_config()) == "softmax":
        return "activation"
    return None


def softmax_outputs(model):
    """`{output name: bool}`: whether the layer of each output of `model` ends with a softmax."""
    return {name: _final_softmax(model.get_layer(name)) is not None for name in model.output_names}


def floorable_outputs(model):
    """Output names whose layer has a softmax activation and a bias (`without_softmax` floors)."""
    return [name for name in model.output_names
            if _final_softmax(model.get_layer(name)) == "activation"
            and getattr(unwrapped(model.get_layer(name)), "use_bias", False)]


def _linear_config(config, activation="linear"):
    """`config` of a layer (or of a wrapper around it) with the softmax replaced by `activation`."""
    config = dict(config)
    if "layer" in config and isinstance(config["layer"], dict):  # a wrapper
        layer = dict(config["layer"])
        layer["config"] = _linear_config(layer["config"], activation)
        config["layer"] = layer
        return config
    old = config["activation"]
    if isinstance(old, dict) and old.get("class_name") == "QuantizeAwareActivation":
        config["activation"] = {**old, "config": {**old["config"], "activation": activation}}
    else:
        config["activation"] = activation
    return config


def without_softmax(model, floors=None):
    r"""A copy of a Functional `model` whose output layers end without softmax.

    With a floor ``t`` for an output whose layer has the softmax as its
    activation (e.g. `Dense(activation="softmax")`) and a bias, the copy's
    layer computes ``max(z − t, 0)`` instead: bias ``b − t`` and a ReLU, which
    TFLite fuses into the layer, so that a full-int8 file quantizes only the
    range of logits that can win, ``[0, max z − t]``, instead of the whole
    logit range with its long negative tail. The argmax is that of ``z``
    whenever ``max z > t``.

    Args:
        model: a Functional `tf_keras` model (e.g. the base model of a
            `MultiTaskModel`, pruning stripped). It is not changed.
        floors: `{output name: t}` for the outputs to floor. Defaults to
            `None` (plain logits).

    Returns:
        `(copy, forms)`: the copy, with the same weights and layer names, and
        `{output name: "logits" | "logits_above_floor" | "as_model"}` —
        `"logits"` where a final softmax was dropped, `"logits_above_floor"`
        where ``max(z − t, 0)`` replaced it, `"as_model"` where the output layer has none (its
        output is unchanged, e.g. a regression head or a head that already
        outputs logits).

    Raises:
        ValueError: a softmax output layer also feeds other layers (dropping
            its softmax would change them), or is a wrapped `Softmax` layer.
    """
    require_functional(model)
    kinds = {name: _final_softmax(model.get_layer(name)) for name in model.output_names}
    for name, kind in kinds.items():
        layer = model.get_layer(name)
        consumers = [n for n in layer._outbound_nodes if n.layer is not None]
        if kind is not None and consumers:
            raise ValueError(
                f"Cannot output logits for {name!r}: its layer also feeds "
                f"{sorted({n.layer.name for n in consumers})}, which would change. Use "
                "outputs='probabilities'.")
        if kind == "layer" and isinstance(layer, keras.layers.Wrapper):
            raise ValueError(f"Cannot output logits for {name!r}: its softmax is a wrapped "
                             f"{type(layer).__name__}. Use outputs='probabilities'.")
    targets = {name for name, kind in kinds.items() if kind is not None}
    floors = dict(floors or {})
    for name in floors:
        layer = unwrapped(model.get_layer(name)) if name in kinds else None
        if name not in targets or kinds[name] != "activation" or not getattr(layer, "use_bias",
                                                                              False):
            raise ValueError(
                f"Argument `floors` names {name!r}, which is not an output layer with a softmax "
                f"activation and a bias. Outputs that can be floored: "
                f"{sorted(n for n in targets if kinds[n] == 'activation')}")

    def clone(layer):
        if layer.name in targets and kinds[layer.name] == "layer":
            return keras.layers.Activation("linear", name=layer.name, dtype=layer.dtype_policy)
        config = layer.get_config()
        if layer.name in targets:
            config = _linear_config(config, "relu" if layer.name in floors else "linear")
        return layer.__class__.from_config(config)

    scope = custom_scope(model)
    with scope:
        copy = keras.models.clone_model(model, clone_function=clone)
    for old, new in zip(model.layers, copy.layers):
        weights = old.get_weights()
        if len(weights) != len(new.weights):
            raise ValueError(f"Layer {old.name!r} has a different number of weights in the copy "
                             f"({len(new.weights)} instead of {len(weights)}).")
        if old.name in floors:
            index = [i for i, w in enumerate(new.weights) if w.name.split(":")[0].endswith("bias")]
            weights[index[0]] = weights[index[0]] - np.float32(floors[old.name])
        if weights:
            new.set_weights(weights)
    forms = {name: "logits" if name in targets else "as_model" for name in kinds}
    forms.update({name: "logits_above_floor" for name in floors})
    return copy, forms


def custom_scope(model):
    """tfmot's quantize scope if `model` holds quantization wrappers, else a no-op scope."""
    import contextlib

    if any(type(layer).__module__.startswith("tensorflow_model_optimization")
           for layer in model.layers):
        import tensorflow_model_optimization as tfmot
        return tfmot.quantization.keras.quantize_scope()
    return contextlib.nullcontext()


def logit_floors(logits, margin=0.1):
    r"""Per-output floors ``t`` below every top logit seen: ``t = min_i max_k z_ik − margin·spread``.

    ``spread = max(max_i top_i − min_i top_i, max_i top_i − median(z))``, with
    ``top_i = max_k z_ik``: the spread of the samples' top logits, or, when
    they are all alike, of the top logits above the median logit. The margin
    keeps samples whose top logit is a little lower than any seen (e.g.
    outside the calibration set) above the floor.

    Args:
        logits: `{output name: array (n, classes)}`, float logits of
            representative samples.
        margin: the fraction of the spread to go below the smallest top
            logit. Defaults to `0.1`.

    Returns:
        `{output name: float}`.

    Example:

    >>> logit_floors({"t": np.array([[0.0, 2.0], [1.0, 0.0]])})
    {'t': 0.85}
    """
    floors = {}
    for name, z in logits.items():
        z = np.asarray(z, np.float64)
        top = z.max(axis=-1).reshape(-1)
        spread = max(top.max() - top.min(), top.max() - float(np.median(z)))
        floors[name] = float(top.min() - margin * spread)
    return floors
