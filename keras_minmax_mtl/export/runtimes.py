"""Running `.tflite` files: LiteRT for phones and the Edge TPU host, TFLite Micro for microcontrollers.

`load_interpreter` opens a file with the first LiteRT Python package that is
installed (`ai_edge_litert`, then `tflite_runtime`, then `tf.lite`), with the
op resolver that can run it: a file whose weights are stored sparse
(`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`, a `DENSIFY` op or sparse tensors)
keeps the default XNNPack delegate when its sparse tensors are all float
(XNNPack densifies them once, when the interpreter is built, and runs its
sparse kernels where the graph allows), and is opened with
`BUILTIN_WITHOUT_DEFAULT_DELEGATES` when one is int8 (dynamic-range and
full-int8 files), which XNNPack fails to prepare.

`run_litert` and `run_micro` run a batch of samples and return the outputs
keyed by the signature's output names (the task names for files written by
`keras_minmax_mtl.export.tflite`), never by position: the output tensors of a
converted multi-output model are not in the Keras order.

Example:

>>> interpreter = load_interpreter("model.tflite")
>>> outputs = run_litert("model.tflite", x)       # {"left": ..., "right": ..., "sum": ...}
>>> outputs, arena = run_micro("micro.tflite", x)  # dequantized, and the arena bytes used
"""
import os
import re
import tempfile

import numpy as np

from keras_minmax_mtl.core.logs import captured_output

__all__ = ["compare_outputs", "inspect_interpreter",
    "load_interpreter",
    "litert_package",
    "is_sparse_model",
    "runs_in_xnnpack",
    "model_details",
    "run_litert",
    "run_micro",
    "micro_interpreter",
    "micro_arena_bytes",
    "micro_min_arena_bytes",
    "micro_invoke_seconds",
    "MicroOpError",
    "TFLiteFileError",
    "read_tflite",
]


class MicroOpError(RuntimeError):
    """TFLite Micro cannot run a model; the message names the missing op (and its layer).

    Attributes:
        ops: the builtin op names TFLite Micro has no kernel for.
    """

    def __init__(self, message, ops=()):
        super().__init__(message)
        self.ops = tuple(ops)


class TFLiteFileError(ValueError):
    """A `.tflite` file is missing, empty, damaged, truncated or of another format (names the file)."""


def _interpreter_module():
    """(name, Interpreter class, OpResolverType enum) of the first LiteRT package found."""
    try:
        from ai_edge_litert import interpreter as module
        return "ai_edge_litert", module.Interpreter, module.OpResolverType
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as module
        return "tflite_runtime", module.Interpreter, module.OpResolverType
    except ImportError:
        pass
    import tensorflow as tf
    return "tf.lite", tf.lite.Interpreter, tf.lite.experimental.OpResolverType


def litert_package():
    """The name of the LiteRT Python package `load_interpreter` uses."""
    return _interpreter_module()[0]


#: The FlatBuffers file identifier of a TFLite model, at bytes 4 to 8.
_TFLITE_IDENTIFIER = b"TFL3"


def _label(model):
    return "The given model bytes" if isinstance(model, (bytes, bytearray)) else \
        f"TFLite file {str(model)!r}"


def read_tflite(model):
    """The bytes of a `.tflite` file, checked to be a TFLite model.

    Args:
        model: a path or the bytes of a `.tflite` file.

    Raises:
        TFLiteFileError: the file does not exist, is a folder, is empty, or
            lacks the TFLite identifier ``TFL3`` (another format, or the start
            of the file is damaged); the message names the file.
    """
    label = _label(model)
    if isinstance(model, (bytes, bytearray)):
        content = bytes(model)
    else:
        try:
            with open(model, "rb") as f:
                content = f.read()
        except FileNotFoundError as error:
            raise TFLiteFileError(f"{label} does not exist.") from error
        except IsADirectoryError as error:
            raise TFLiteFileError(f"{label} is a folder, not a .tflite file.") from error
    if not content:
        raise TFLiteFileError(f"{label} is empty (0 bytes): not a TFLite model.")
    if content[4:8] != _TFLITE_IDENTIFIER:
        raise TFLiteFileError(
            f"{label} is not a TFLite model: it lacks the 'TFL3' identifier at bytes 4-8 "
            f"({len(content)} bytes; another format, or damaged).")
    return content


def _read(model):
    return read_tflite(model)


def _interpreter(model, content, **kwargs):
    """`Interpreter(model_content=content, **kwargs)`; a file LiteRT refuses raises `TFLiteFileError`."""
    _, interpreter_class, _ = _interpreter_module()
    try:
        return interpreter_class(model_content=content, **kwargs)
    except ValueError as error:
        raise TFLiteFileError(f"{_label(model)} is not a valid TFLite model (damaged or "
                              f"truncated, {len(content)} bytes): {error}") from error


def inspect_interpreter(content, model=None):
    """An interpreter used only to read the graph (it is never invoked)."""
    _, _, resolver = _interpreter_module()
    return _interpreter(content if model is None else model, content,
                        experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def model_details(model):
    """The graph of a `.tflite` file: ops, tensors, signature, subgraph outputs.

    Args:
        model: a path or the bytes of a `.tflite` file.

    Returns:
        A dict with `ops` (`[{"op", "inputs", "outputs"}]`, tensor indices),
        `tensors` (`{index: {"name", "shape", "dtype", "sparse", "quantization"}}`),
        `signature` (`{"inputs": {name: index}, "outputs": {name: index}}` of the
        first signature, or `None`) and `outputs` (tensor indices of the
        subgraph's outputs, in file order, which is TFLite Micro's order).
    """
    return _details(_read(model), model)


def _details(content, model):
    """`model_details` of the bytes `content` of `model` (a path or the bytes, for messages)."""
    interpreter = inspect_interpreter(content, model)
    tensors = {}
    for t in interpreter.get_tensor_details():
        scales = np.asarray(t["quantization_parameters"]["scales"])
        tensors[int(t["index"])] = {
            "name": t["name"],
            "shape": [int(s) for s in t["shape_signature"]] if len(t.get("shape_signature", [])) else
                     [int(s) for s in t["shape"]],
            "dtype": np.dtype(t["dtype"]).name,
            "sparse": bool(t["sparsity_parameters"]),
            "quantization": {"scale": float(scales[0]) if scales.size == 1 else scales.tolist(),
                             "zero_point": np.asarray(
                                 t["quantization_parameters"]["zero_points"]).tolist()}
            if scales.size else None,
        }
    ops = [{"op": o["op_name"], "inputs": [int(i) for i in o["inputs"] if i >= 0],
            "outputs": [int(i) for i in o["outputs"]]} for o in interpreter._get_ops_details()]
    signatures = interpreter.get_signature_list()
    signature = None
    if signatures:
        key = next(iter(signatures))
        runner = interpreter.get_signature_runner(key)
        signature = {
            "key": key,
            "inputs": {k: int(v["index"]) for k, v in runner.get_input_details().items()},
            "outputs": {k: int(v["index"]) for k, v in runner.get_output_details().items()},
        }
    return {"ops": ops, "tensors": tensors, "signature": signature,
            "inputs": [int(d["index"]) for d in interpreter.get_input_details()],
            "outputs": [int(d["index"]) for d in interpreter.get_output_details()]}


def is_sparse_model(model):
    """Whether a `.tflite` file stores weights sparse (it has a `DENSIFY` op or sparse tensors)."""
    return _is_sparse(model_details(model))


def _is_sparse(details):
    return (any(op["op"] == "DENSIFY" for op in details["ops"])
            or any(t["sparse"] for t in details["tensors"].values()))


#: The dtypes of sparse tensors XNNPack takes (it densifies them when the interpreter is built).
_XNNPACK_SPARSE_DTYPES = ("float32", "float16")


def _xnnpack_prepares(details):
    """Whether XNNPack, LiteRT's default delegate, prepares the file: no int8 sparse tensor.

    XNNPack densifies float32/float16 sparse weights (the input of a
    `DENSIFY` op) when the interpreter is built; a sparse int8 weight (of a
    dynamic-range or full-int8 file) makes it fail to prepare the node
    ("failed to delegate FULLY_CONNECTED node ... failed to prepare").
    """
    return all(t["dtype"] in _XNNPACK_SPARSE_DTYPES
               for t in details["tensors"].values() if t["sparse"])


def runs_in_xnnpack(interpreter):
    """Whether LiteRT's default delegate (XNNPack) runs part of an interpreter's graph.

    True when the interpreter's graph holds a `DELEGATE` node, the node
    LiteRT puts in place of the ops a delegate took over.

    Example:

    >>> runs_in_xnnpack(load_interpreter("model.tflite"))                           # float file
    True
    >>> runs_in_xnnpack(load_interpreter("model.tflite", default_delegates=False))
    False
    """
    return any(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def load_interpreter(model, num_threads=None, default_delegates=None):
    """Opens a `.tflite` file with LiteRT and the op resolver that runs it.

    Uses `ai_edge_litert` if installed, else `tflite_runtime`, else `tf.lite`.
    Dense files and files whose sparse weights are all float get the default
    resolver, with LiteRT's default delegate (XNNPack), as a phone app runs
    them: XNNPack densifies float sparse weights once, when the interpreter is
    built, so such a file runs at the dense file's speed, or faster where
    XNNPack's sparse kernels apply (1×1 convolutions, see
    `keras_minmax_mtl.sparsity.policy.XNNPackSparsePolicy`). Files with an
    int8 sparse weight (dynamic-range and full-int8 files stored sparse) get
    `OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`: XNNPack fails to
    prepare those nodes.

    Args:
        model: a path or the bytes of a `.tflite` file.
        num_threads: CPU threads for the interpreter. Defaults to `None`
            (LiteRT's default).
        default_delegates: `True` or `False` forces LiteRT's default delegates
            (XNNPack) on or off. Defaults to `None`: off for files with an
            int8 sparse weight, on for the others.

    Returns:
        An interpreter with its tensors allocated. LiteRT's log lines while
        it loads (``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``)
        are captured, and shown only if loading fails.

    Raises:
        TFLiteFileError: the file is missing, empty, damaged, truncated or not
            a TFLite model (the message names the file).

    Example:

    >>> runner = load_interpreter("model.tflite").get_signature_runner()
    >>> outputs = runner(image=x)   # {"left": ..., "right": ..., "sum": ...}
    """
    content = _read(model)
    _, _, resolver = _interpreter_module()
    kwargs = {}
    if num_threads is not None:
        kwargs["num_threads"] = int(num_threads)
    if default_delegates is None:
        default_delegates = _xnnpack_prepares(_details(content, model))
    if not default_delegates:
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with captured_output():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = _interpreter(model, content, **kwargs)
        interpreter.allocate_tensors()
    return interpreter


def compare_outputs(reference, got, quantization, tolerance):
    r"""Per task, how a file's outputs `got` differ from the Keras outputs `reference`.

    For every task of `reference`: the largest and the mean absolute error;
    for class outputs (last axis > 1) the top-1 agreement and the fraction of
    samples whose largest value is shared by two or more classes (the argmax
    then takes the lowest of them; frequent for int8 probabilities); for a
    float file, whether every value is within the tolerance,
    :math:`|\hat y - y| \le \mathrm{tolerance}\,(1 + |y|)`.

    Example:

    >>> y = {"a": np.array([[0.2, 0.8], [0.6, 0.4]])}
    >>> compare_outputs(y, {"a": y["a"] + 1e-6}, "float", 1e-4)["a"]["within_tolerance"]
    True
    """
    results = {}
    for task, want in reference.items():
        have = np.asarray(got[task]).reshape(want.shape)
        error = np.abs(have - want)
        entry = {"max_abs_error": float(error.max()), "mean_abs_error": float(error.mean())}
        if want.ndim >= 2 and want.shape[-1] > 1:
            entry["top1_agreement"] = float(np.mean(have.argmax(-1) == want.argmax(-1)))
            top = have.max(-1, keepdims=True)
            entry["top1_tie_fraction"] = float(np.mean(np.sum(have == top, axis=-1) > 1))
        if quantization == "float":
            entry["within_tolerance"] = bool(np.all(error <= tolerance * (1.0 + np.abs(want))))
        results[task] = entry
    return results


def _quantize(x, scale, zero, dtype):
    if np.dtype(dtype).kind == "f" or not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y, scale, zero):
    if np.issubdtype(y.dtype, np.floating) or not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def _as_input_dict(x, names):
    if isinstance(x, dict):
        missing = sorted(set(names) - set(x))
        if missing:
            raise ValueError(f"Argument `x` lacks the model inputs {missing}. "
                             f"Received keys: {sorted(x)}")
        return {name: np.asarray(x[name]) for name in names}
    if len(names) != 1:
        raise ValueError(f"Argument `x` must be a dict keyed by the model inputs {names}.")
    return {names[0]: np.asarray(x)}


def run_litert(model, x, batch_size=None, num_threads=None):
    """Runs a `.tflite` file on `x` with LiteRT; outputs keyed by signature output name.

    Quantized inputs are quantized with the file's own scale and zero point,
    and quantized outputs are dequantized, so results compare directly with
    the Keras model.

    Args:
        model: a path or the bytes of a `.tflite` file with a signature.
        x: an array (single input) or a dict keyed by input name; the first
            axis is the sample axis.
        batch_size: samples per invoke. Defaults to `None`: the file's static
            batch size, or all samples at once if the batch is dynamic.
        num_threads: passed to `load_interpreter`.

    Returns:
        `{output name: float32 array of shape (n, ...)}`.
    """
    interpreter = load_interpreter(model, num_threads=num_threads)
    runner = interpreter.get_signature_runner()
    inputs = runner.get_input_details()
    x = _as_input_dict(x, list(inputs))
    n = len(next(iter(x.values())))
    static = {k: int(v["shape_signature"][0]) for k, v in inputs.items()}
    if batch_size is None:
        fixed = [b for b in static.values() if b > 0]
        batch_size = fixed[0] if fixed else n
    outputs = runner.get_output_details()
    results = {}
    for start in range(0, n, batch_size):
        feed = {}
        for name, detail in inputs.items():
            value = x[name][start:start + batch_size]
            scale, zero = detail["quantization"]
            feed[name] = _quantize(value, scale, zero, detail["dtype"])
        out = runner(**feed)
        for name, detail in outputs.items():
            scale, zero = detail["quantization"]
            results.setdefault(name, []).append(_dequantize(np.asarray(out[name]), scale, zero))
    return {name: np.concatenate(parts) for name, parts in results.items()}


class _StderrCapture:
    """Captures what C++ code writes to file descriptor 2 (TFLite Micro logs there)."""

    def __enter__(self):
        import sys
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()
        return False


_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'")


def micro_interpreter(model, arena_size=None):
    """A TFLite Micro interpreter (`tflite-micro`'s host build) for a `.tflite` file.

    Args:
        model: a path or the bytes of a `.tflite` file.
        arena_size: tensor-arena bytes. Defaults to `None`: TFLite Micro's
            Python default (10× the file size).

    Raises:
        MicroOpError: the file uses an op TFLite Micro lacks (e.g. `DENSIFY`),
            naming the op, or the arena is too small.
    """
    from tflite_micro.python.tflite_micro import runtime

    content = _read(model)
    inspect_interpreter(content, model)  # a damaged file is refused by name, not by TFLite Micro
    capture = _StderrCapture()
    try:
        with capture:
            interpreter = runtime.Interpreter.from_bytes(content, arena_size=arena_size)
    except RuntimeError as error:
        missing = sorted(set(_MISSING_OP.findall(capture.text)))
        if missing:
            raise MicroOpError(
                f"TFLite Micro has no kernel for the op(s) {missing}; the model cannot run "
                f"on a microcontroller. Log: {capture.text.strip()}", missing) from error
        raise MicroOpError(f"TFLite Micro could not load the model: {error}. "
                           f"Log: {capture.text.strip()}") from error
    return interpreter


def micro_arena_bytes(interpreter):
    """Tensor-arena bytes a TFLite Micro interpreter has allocated (call after `invoke`).

    Read from the interpreter's `RecordingMicroAllocator` report
    ("Arena allocation total N bytes").
    """
    capture = _StderrCapture()
    with capture:
        interpreter.print_allocations()
    match = re.search(r"Arena allocation total (\d+) bytes", capture.text)
    if not match:
        raise RuntimeError(f"TFLite Micro did not report its arena usage: {capture.text!r}")
    return int(match.group(1))


def _invoke_micro(interpreter, inputs):
    """Sets `inputs` (one array per input, in order) and invokes; TFLite Micro's log captured."""
    with _StderrCapture():
        for index, value in enumerate(inputs):
            interpreter.set_input(value, index)
        interpreter.invoke()


def _micro_runs_here(content, arena_size, inputs):
    try:
        with _StderrCapture():
            interpreter = micro_interpreter(content, arena_size=arena_size)
        _invoke_micro(interpreter, inputs)
    except (RuntimeError, MicroOpError):
        return False
    return True


def _micro_runs(content, arena_size, inputs):
    """Whether TFLite Micro loads and runs the model with this arena, probed in a forked child.

    With an arena a little too small, TFLite Micro's host build can crash the
    process (a segmentation fault) instead of reporting the failed allocation,
    so each probe runs in a child process and a crash counts as "does not
    run". Where `os.fork` does not exist, the probe runs in this process.
    """
    if not hasattr(os, "fork"):
        return _micro_runs_here(content, arena_size, inputs)
    pid = os.fork()
    if pid == 0:  # the child: probe, then leave without running any Python exit handler
        import faulthandler

        faulthandler.disable()  # a crash here is an expected answer, not an error to report
        code = 1
        try:
            code = 0 if _micro_runs_here(content, arena_size, inputs) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def micro_min_arena_bytes(model, step=16):
    """The smallest tensor arena (a multiple of `step` bytes) with which TFLite Micro runs `model`.

    Every probe loads the model and invokes it on zeros in a forked child
    (`_micro_runs`); "runs" is monotone in the arena size. The search starts
    from what TFLite Micro reports allocating with its Python default arena
    (10× the file size), `u` bytes: if an arena of `u − step` fails, the
    answer lies above it, so the bound above is found by doubling steps
    from `u` and the answer by bisection between the two (about 7 probes
    instead of the 17 of a bisection from 0). If `u − step` runs, the
    bisection covers `[0, u − step]`. Either way the result is the smallest
    multiple of `step` that runs.
    """
    content = _read(model)
    interpreter = micro_interpreter(content)
    # As many inputs as the file has (probing past the last one makes TFLite Micro print an error).
    details = [interpreter.get_input_details(i) for i in range(len(model_details(content)["inputs"]))]
    inputs = [np.zeros(d["shape"], d["dtype"]) for d in details]
    ceiling = -(-len(content) * 10 // step)  # the default arena, in units of `step`
    if not _micro_runs(content, ceiling * step, inputs):
        raise MicroOpError("TFLite Micro cannot run the model even with the default arena.")
    try:
        _invoke_micro(interpreter, inputs)
        used = micro_arena_bytes(interpreter) // step  # units of `step`, rounded down
    except (RuntimeError, MicroOpError):
        used = 0
    low, high = 0, ceiling  # invariant: `low` fails (0 always does) and `high` runs
    if 1 < used < ceiling:
        if _micro_runs(content, (used - 1) * step, inputs):
            high = used - 1
        else:
            low, gap = used - 1, max(1, used // 16)
            while low + gap < ceiling and not _micro_runs(content, (low + gap) * step, inputs):
                low, gap = low + gap, 2 * gap
            high = min(low + gap, ceiling)
    while high - low > 1:
        middle = (low + high) // 2
        if _micro_runs(content, middle * step, inputs):
            high = middle
        else:
            low = middle
    return high * step


def _micro_quantization(detail):
    """`(scale, zero point)` of a TFLite Micro tensor detail (`(0.0, 0)` if not quantized)."""
    q = detail["quantization_parameters"]
    scale = float(q["scales"][0]) if len(q["scales"]) else 0.0
    zero = int(q["zero_points"][0]) if len(q["zero_points"]) else 0
    return scale, zero


def _micro_input(interpreter, index, value):
    """`value` as input `index` of a TFLite Micro interpreter wants it (quantized if it is)."""
    d = interpreter.get_input_details(index)
    scale, zero = _micro_quantization(d)
    return _quantize(value, scale, zero, d["dtype"])


def run_micro(model, x):
    """Runs a `.tflite` file sample by sample in TFLite Micro.

    Args:
        model: a path or the bytes of a `.tflite` file with batch size 1.
        x: an array (single input) or a dict keyed by input name.

    Returns:
        `(outputs, arena_bytes)`: `{output name: float32 array (n, ...)}` keyed
        through the file's signature (so by task name), dequantized; and the
        tensor-arena bytes the interpreter allocated.

    Raises:
        MicroOpError: the file uses an op TFLite Micro lacks.
    """
    content = _read(model)
    details = model_details(content)
    if details["signature"] is None:
        raise ValueError(f"{_label(model)} has no signature, so its outputs cannot be named "
                         "(export it with keras_minmax_mtl.export.tflite.export_tflite).")
    by_tensor_in = {v: k for k, v in details["signature"]["inputs"].items()}
    by_tensor_out = {v: k for k, v in details["signature"]["outputs"].items()}
    input_names = [by_tensor_in[i] for i in details["inputs"]]
    output_names = [by_tensor_out[i] for i in details["outputs"]]
    x = _as_input_dict(x, input_names)
    interpreter = micro_interpreter(content)
    n = len(next(iter(x.values())))
    # Quantize each input once, not sample by sample (the quantization is element-wise).
    for index, name in enumerate(input_names):
        x[name] = _micro_input(interpreter, index, x[name])
    output_quantization = [_micro_quantization(interpreter.get_output_details(index))
                           for index in range(len(output_names))]
    results = {name: [] for name in output_names}
    for s in range(n):
        for index, name in enumerate(input_names):
            interpreter.set_input(x[name][s:s + 1], index)
        interpreter.invoke()
        for index, name in enumerate(output_names):
            scale, zero = output_quantization[index]
            results[name].append(_dequantize(np.asarray(interpreter.get_output(index)), scale, zero))
    arena = micro_arena_bytes(interpreter)
    return {name: np.concatenate(parts) for name, parts in results.items()}, arena


def micro_invoke_seconds(model, x=None, repeats=100, warmup=10):
    """Median wall-clock seconds of one TFLite Micro `invoke` of a `.tflite` file, in this process.

    The interpreter is loaded once (not timed), its inputs set once (`x`
    quantized with the file's own scale and zero point, or zeros), then
    `warmup` untimed invokes are followed by `repeats` timed ones
    (`time.perf_counter` around each `invoke`). TFLite Micro's host build runs
    the reference kernels on one thread, so the ratio of two files measured
    in one process is the meaningful figure, not the absolute time.

    Args:
        model: a path or the bytes of a `.tflite` file (batch size 1).
        x: one sample, an array or a dict keyed by input name, with or
            without the batch axis of 1. Defaults to `None` (zeros).
        repeats: timed invokes (> 0). Defaults to `100`.
        warmup: untimed invokes before them (>= 0). Defaults to `10`.

    Returns:
        The median seconds per invoke (a float).

    Example:

    >>> ratio = (micro_invoke_seconds("shrunk.tflite", x[0])
    ...          / micro_invoke_seconds("dense.tflite", x[0]))
    """
    import time

    if not isinstance(repeats, int) or repeats <= 0:
        raise ValueError("Argument `repeats` must be an integer > 0. "
                         f"Received: repeats={repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError("Argument `warmup` must be an integer >= 0. "
                         f"Received: warmup={warmup!r}")
    content = _read(model)
    details = model_details(content)
    by_tensor = {v: k for k, v in (details["signature"] or {"inputs": {}})["inputs"].items()}
    names = [by_tensor.get(i, str(i)) for i in details["inputs"]]
    values = None if x is None else _as_input_dict(x, names)
    interpreter = micro_interpreter(content)
    for index, name in enumerate(names):
        d = interpreter.get_input_details(index)
        value = (np.zeros(d["shape"], np.float32) if values is None
                 else np.asarray(values[name], np.float32).reshape(d["shape"]))
        interpreter.set_input(_micro_input(interpreter, index, value), index)
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
