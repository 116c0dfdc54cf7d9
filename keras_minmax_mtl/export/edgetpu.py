"""The Edge TPU compiler's documented rules, checked in Python, and the compiler itself when installed.

`edgetpu_compiler` (Coral) maps a full-int8 `.tflite` graph to the Edge TPU
only where every rule of its documentation ("TensorFlow models on the Edge
TPU", coral.ai) holds:

- the op is one of `EDGETPU_OPS`;
- every tensor the op touches is quantized to 8 bits (int8 or uint8; the
  int32 biases of convolutions and fully-connected layers are allowed);
- every tensor size is fixed (no dynamic dimension, no `-1` in the signature);
- a tensor has at most 3 dimensions, or only its 3 innermost dimensions are
  larger than 1 (so an image batch of 1 is fine);
- the compiler partitions the graph once: the first op that breaks a rule
  and every op after it run on the CPU.

`check_edgetpu` applies these rules op by op and names, for every op that
would fall back to the CPU, the op, the Keras layer it comes from and the
reason. `run_edgetpu_compiler` runs the real compiler when it is on `PATH`
and keeps its log; it is not installable here, so the Python check is what
this package verifies.

Example:

>>> check = check_edgetpu("model_edgetpu.tflite", layer_names=[l.name for l in model.layers])
>>> check["all_on_edgetpu"], [op["op"] for op in check["cpu_ops"]]
(True, [])
"""
import pathlib
import shutil
import subprocess

from keras_minmax_mtl.export.runtimes import model_details

__all__ = ["EDGETPU_OPS", "check_edgetpu", "run_edgetpu_compiler", "op_layers"]

#: Ops the Edge TPU compiler maps (coral.ai "Supported operations"), by TFLite builtin name.
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU",
    "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT",
    "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE",
    "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})

_EIGHT_BIT = {"int8", "uint8"}


def op_layers(details, layer_names=None):
    """For each op of `model_details(...)`, the Keras layer it comes from (or `None`).

    TFLite names tensors after the TensorFlow ops that made them
    (`"model/left_hidden/MatMul;..."`); the layer is the first path segment
    that is a name in `layer_names`, looked up on the op's outputs first,
    then on its inputs (the outputs of the last ops carry signature names,
    `"StatefulPartitionedCall:0"`, but their weights the layer's).

    Without `layer_names` (a file read on its own) the layer is the second
    segment of the first name of the form ``model/layer/op``: right for the
    files `export_tflite` writes from a Functional model; `None` where no
    tensor of the op is named that way (a file from elsewhere may name its
    tensors otherwise, and a layer of a nested model is named by the nested
    model's name).
    """
    names = set(layer_names or ())

    def layer_of(tensor_index):
        for part in details["tensors"][tensor_index]["name"].split(";"):
            segments = part.split("/")
            if not names:
                if len(segments) >= 3 and all(segments[:2]):
                    return segments[1]
                continue
            for segment in segments:
                if segment in names:
                    return segment
        return None

    layers = []
    for op in details["ops"]:
        found = None
        for index in op["outputs"] + op["inputs"]:
            found = layer_of(index)
            if found:
                break
        layers.append(found)
    return layers


def _reasons(op, details, data):
    reasons = []
    if op["op"] not in EDGETPU_OPS:
        reasons.append(f"op {op['op']} is not supported by the Edge TPU")
    n_inputs = len(op["inputs"])
    for position, index in enumerate(op["inputs"] + op["outputs"]):
        tensor = details["tensors"][index]
        # int32 is allowed for the constant parameters of an op (a bias, a
        # shape, axes, paddings), which are its inputs after the first.
        parameter = 0 < position < n_inputs and tensor["dtype"] == "int32"
        if tensor["dtype"] not in _EIGHT_BIT and not parameter:
            reasons.append(f"tensor {tensor['name']!r} is {tensor['dtype']}, not int8/uint8")
        shape = tensor["shape"]
        if any(s < 0 for s in shape):
            reasons.append(f"tensor {tensor['name']!r} has a dynamic shape {shape}")
        # The rank rule is about the activations; constant weights (a 4-D
        # convolution filter) are laid out by the compiler.
        if index in data and len(shape) > 3 and any(s > 1 for s in shape[:-3]):
            reasons.append(f"tensor {tensor['name']!r} has shape {shape}: more than 3 dimensions "
                           "larger than 1")
        if tensor["sparse"]:
            reasons.append(f"tensor {tensor['name']!r} is stored sparse")
    return reasons


def check_edgetpu(model, layer_names=()):
    """Checks a `.tflite` file against the Edge TPU compiler's rules, op by op.

    Args:
        model: a path or the bytes of a `.tflite` file.
        layer_names: names of the Keras layers of the exported model, used to
            name the layer each op comes from. Defaults to `()`.

    Returns:
        `{"ops": [{"index", "op", "layer", "on_edgetpu", "reasons"}],
        "cpu_ops": [the ops with on_edgetpu False], "all_on_edgetpu": bool,
        "first_cpu_op": index or None}`. An op after the first op that breaks
        a rule runs on the CPU (the compiler partitions once) and says so.
    """
    details = model_details(model)
    layers = op_layers(details, layer_names)
    data = set(details["inputs"]) | {o for op in details["ops"] for o in op["outputs"]}
    ops, first = [], None
    for index, (op, layer) in enumerate(zip(details["ops"], layers)):
        reasons = _reasons(op, details, data)
        if reasons and first is None:
            first = index
        if not reasons and first is not None:
            reasons = [f"follows op {first} ({details['ops'][first]['op']}), which runs on the "
                       "CPU: the compiler partitions the graph only once"]
        ops.append({"index": index, "op": op["op"], "layer": layer,
                    "on_edgetpu": not reasons, "reasons": reasons})
    cpu = [op for op in ops if not op["on_edgetpu"]]
    return {"ops": ops, "cpu_ops": cpu, "all_on_edgetpu": not cpu, "first_cpu_op": first}


def run_edgetpu_compiler(path, out_dir, executable="edgetpu_compiler"):
    """Runs `edgetpu_compiler` on `path` if it is on `PATH`; keeps its log.

    Args:
        path: the `.tflite` file.
        out_dir: folder for the compiled `*_edgetpu.tflite` and `edgetpu_compiler.log`.
        executable: the compiler's name or path. Defaults to `"edgetpu_compiler"`.

    Returns:
        `{"found": False}` when the compiler is not installed, else
        `{"found": True, "returncode", "log" (path), "compiled" (path or None)}`.
    """
    found = shutil.which(executable)
    if not found:
        return {"found": False}
    out_dir = pathlib.Path(out_dir)
    result = subprocess.run([found, "-s", "-o", str(out_dir), str(path)],
                            capture_output=True, text=True, check=False)
    log = out_dir / "edgetpu_compiler.log"
    log.write_text(result.stdout + result.stderr)
    compiled = out_dir / (pathlib.Path(path).stem + "_edgetpu.tflite")
    return {"found": True, "returncode": result.returncode, "log": str(log),
            "compiled": str(compiled) if compiled.exists() else None}
