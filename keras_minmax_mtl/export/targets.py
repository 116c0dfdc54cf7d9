"""Export targets: where a `.tflite` file will run, and what that requires of it.

Each target is one small class on `ExportTarget`; adding a target is a new
class registered in `TARGETS`, not an `if` chain in `export_tflite`.

| target    | quantization              | batch  | weights stored          | removed units cut | verified in   |
|-----------|---------------------------|--------|-------------------------|-------------------|---------------|
| `mobile`  | float, dynamic, int8      | as is  | sparse if smaller       | on request        | LiteRT        |
| `micro`   | int8                      | 1      | dense (no DENSIFY op)   | automatically     | TFLite Micro  |
| `edgetpu` | int8 (int8 or uint8 I/O)  | 1      | dense                   | automatically     | LiteRT + rules|

Example:

>>> from keras_minmax_mtl.export.tflite import export_tflite
>>> export_tflite(model, "out/model.tflite", target=MicroTarget(), representative_data=x)
"""
import numpy as np

from keras_minmax_mtl.export import runtimes
from keras_minmax_mtl.export.edgetpu import check_edgetpu, op_layers, run_edgetpu_compiler

__all__ = ["ExportTarget", "MobileTarget", "MicroTarget", "EdgeTPUTarget", "TARGETS", "get_target",
           "compiled_name"]

QUANTIZATIONS = ("float", "dynamic", "int8")


class ExportTarget:
    """What a deployment target requires of a `.tflite` file, and how it runs one.

    Attributes:
        name: the target's name (`export_tflite(..., target=name)`).
        quantizations: the `quantization` values the target accepts; the first
            is the default.
        batch_size: a static batch size the file must have, or `None` to keep
            the model's (dynamic) batch.
        sparse_storage: the `sparse_storage` values the target accepts
            (`"auto"`: store weights sparse when the file gets smaller).
        io_dtype: the dtype of the inputs and outputs of a full-int8 file.
        structured_auto: whether `structured="auto"` removes the units of a
            structured-pruned model (`keras_minmax_mtl.export.surgery.shrink`):
            `True` on the three targets here: only removed units make a file faster
            (sparse storage makes it smaller, not faster).
    """

    name = None
    quantizations = QUANTIZATIONS
    batch_size = None
    sparse_storage = ("auto", True, False)
    io_dtype = "int8"
    structured_auto = False

    def check_quantization(self, quantization):
        """Returns the quantization to use (the default for `None`), or raises."""
        if quantization is None:
            return self.quantizations[0]
        if quantization not in self.quantizations:
            raise ValueError(
                f"Argument `quantization` must be one of {list(self.quantizations)} for target "
                f"{self.name!r}. Received: quantization={quantization!r}")
        return quantization

    def check_sparse_storage(self, sparse_storage):
        if sparse_storage not in self.sparse_storage:
            raise ValueError(
                f"Argument `sparse_storage` must be one of {list(self.sparse_storage)} for target "
                f"{self.name!r}. Received: sparse_storage={sparse_storage!r}")
        return sparse_storage

    def run(self, path, x, layer_names):
        """Runs the file on samples `x`: `(outputs by name, extra report entries)`."""
        return runtimes.run_litert(path, x), {"runtime": runtimes.litert_package()}

    def extra_files(self, path, content, layer_names, work_dir):
        """Writes target-specific files into `work_dir`: `(report entries, {file name: path})`."""
        return {}, {}

    def get_config(self):
        return {}


class MobileTarget(ExportTarget):
    """Phones (LiteRT): float, dynamic-range or full-int8, weights sparse where smaller.

    Sparse storage (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`) adds `DENSIFY`
    ops. A float file runs them in XNNPack, LiteRT's default delegate, which
    densifies the weights once at load (dense speed), or runs 1×1
    convolutions with its sparse kernels
    (`keras_minmax_mtl.sparsity.policy.XNNPackSparsePolicy`); an int8 file
    stored sparse needs the op resolver without default delegates. Both are
    what `keras_minmax_mtl.export.runtimes.load_interpreter` picks.

    `structured="auto"` removes the units of a structured-pruned model here too:
    the shrunk file is dense and smaller, and LiteRT runs it at about a third of
    the dense file's CPU time, where sparse storage runs at dense speed at best
    (`benchmarks/mobile_speed.py`, docs/export.md "Faster on phones").
    """

    name = "mobile"
    structured_auto = True


class MicroTarget(ExportTarget):
    """Microcontrollers (TFLite Micro): dense full-int8, batch 1, plus a C array.

    Writes `<stem>.cc` and `<stem>.h` beside the file: the model as an
    `alignas(16) const unsigned char` array and its length. The report holds
    `arena_bytes`, the smallest tensor arena (multiple of 16 bytes) with which
    TFLite Micro loads and runs the file, and `arena_recorded_bytes`, what its
    recording allocator reports as allocated (it leaves out the temporary
    memory that preparing the kernels needs).

    Args:
        array_name: the C identifier of the array (its length is
            `<array_name>_len`). Defaults to `"g_model"`.
    """

    name = "micro"
    quantizations = ("int8",)
    batch_size = 1
    sparse_storage = (False,)
    structured_auto = True

    def __init__(self, array_name="g_model"):
        if not isinstance(array_name, str) or not array_name.isidentifier():
            raise ValueError("Argument `array_name` must be a C identifier. "
                             f"Received: array_name={array_name!r}")
        self.array_name = array_name

    def run(self, path, x, layer_names):
        try:
            outputs, arena = runtimes.run_micro(path, x)
        except runtimes.MicroOpError as error:
            details = runtimes.model_details(path)
            layers = op_layers(details, layer_names)
            missing = [f"{op['op']} (layer {layer!r})" for op, layer in zip(details["ops"], layers)
                       if op["op"] in error.ops]
            if not missing:
                raise
            raise runtimes.MicroOpError(
                f"TFLite Micro cannot run this model: it has no kernel for {missing}. Replace "
                "these layers, or export for target 'mobile'.", error.ops) from error
        return outputs, {"runtime": "tflite_micro",
                         "arena_bytes": runtimes.micro_min_arena_bytes(path),
                         "arena_recorded_bytes": arena}

    def extra_files(self, path, content, layer_names, work_dir):
        import pathlib

        stem = pathlib.Path(path).stem
        header, source = c_array(content, self.array_name, stem + ".h")
        (work_dir / (stem + ".h")).write_text(header)
        (work_dir / (stem + ".cc")).write_text(source)
        return ({"c_array": {"name": self.array_name, "header": stem + ".h",
                             "source": stem + ".cc"}},
                {stem + ".h": work_dir / (stem + ".h"), stem + ".cc": work_dir / (stem + ".cc")})

    def get_config(self):
        return {"array_name": self.array_name}


class EdgeTPUTarget(ExportTarget):
    """Coral Edge TPU: dense full-int8, batch 1, static shapes, checked against the compiler's rules.

    The file written is the converted full-int8 model, which the Edge TPU
    runs only once `edgetpu_compiler` has compiled it. When the compiler is
    on `PATH` it is run and its output is written beside the file under
    `compiled_name` (`x_uncompiled.tflite` -> `x.tflite`, else
    `x_edgetpu.tflite`, the compiler's own naming); the report's
    `edgetpu["compiler"]` says whether it was found, and `edgetpu["rules"]`
    what the Python check of the compiler's rules found.

    Args:
        io_dtype: `"int8"` or `"uint8"` inputs and outputs. Defaults to `"int8"`.
        compiler: the `edgetpu_compiler` executable, run if found on `PATH`
            (its log is kept beside the file). Defaults to `"edgetpu_compiler"`.
    """

    name = "edgetpu"
    quantizations = ("int8",)
    batch_size = 1
    sparse_storage = (False,)
    structured_auto = True

    def __init__(self, io_dtype="int8", compiler="edgetpu_compiler"):
        if io_dtype not in ("int8", "uint8"):
            raise ValueError("Argument `io_dtype` must be one of ['int8', 'uint8']. "
                             f"Received: io_dtype={io_dtype!r}")
        self.io_dtype = io_dtype
        self.compiler = compiler

    def extra_files(self, path, content, layer_names, work_dir):
        check = check_edgetpu(content, layer_names)
        compiled = run_edgetpu_compiler(path, work_dir, self.compiler)
        files = {}
        if compiled.get("found"):
            files["edgetpu_compiler.log"] = work_dir / "edgetpu_compiler.log"
            compiled["log"] = "edgetpu_compiler.log"
            if compiled.get("compiled"):
                import pathlib
                name = compiled_name(pathlib.Path(path).stem)
                files[name] = pathlib.Path(compiled["compiled"])
                compiled["compiled"] = name
        return {"edgetpu": {"rules": check, "compiler": compiled}}, files

    def get_config(self):
        return {"io_dtype": self.io_dtype, "compiler": self.compiler}


def compiled_name(stem):
    """The name of the compiled Edge TPU file made from the file `<stem>.tflite`.

    ``"model_edgetpu_uncompiled"`` -> ``"model_edgetpu.tflite"`` (the name
    `kmm export` gives the uncompiled file); any other stem `x` ->
    ``"x_edgetpu.tflite"``, as `edgetpu_compiler` names its output.
    """
    suffix = "_uncompiled"
    return (stem[:-len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix)
            else stem + "_edgetpu") + ".tflite"


#: Target names and classes.
TARGETS = {cls.name: cls for cls in (MobileTarget, MicroTarget, EdgeTPUTarget)}


def get_target(target):
    """An `ExportTarget` from a name in `TARGETS` or an instance."""
    if isinstance(target, ExportTarget):
        return target
    if target in TARGETS:
        return TARGETS[target]()
    raise ValueError(f"Argument `target` must be one of {sorted(TARGETS)} or an `ExportTarget`. "
                     f"Received: target={target!r}")


def c_array(content, name="g_model", header_name="model.h"):
    """`(header, source)`: C/C++ text holding `content` as a 16-byte-aligned array.

    The header declares `extern const unsigned char name[]` and
    `extern const unsigned int name_len`; the source defines them.
    """
    guard = "".join(c if c.isalnum() else "_" for c in header_name).upper() + "_"
    header = (
        f"// Generated by keras_minmax_mtl.export.tflite: a TFLite model for TFLite Micro.\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"#ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n"
        f"extern const unsigned char {name}[];\n"
        f"extern const unsigned int {name}_len;\n\n"
        f"#ifdef __cplusplus\n}}\n#endif\n\n#endif  // {guard}\n")
    data = np.frombuffer(bytes(content), dtype=np.uint8)
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12)]
    body = ",\n  ".join(rows)
    source = (
        f"// Generated by keras_minmax_mtl.export.tflite: a TFLite model for TFLite Micro.\n"
        f"#include \"{header_name}\"\n\n"
        f"#ifdef __cplusplus\n#define KMM_ALIGN alignas(16)\n#else\n"
        f"#include <stdalign.h>\n#define KMM_ALIGN _Alignas(16)\n#endif\n\n"
        f"KMM_ALIGN const unsigned char {name}[] = {{\n  {body}\n}};\n"
        f"const unsigned int {name}_len = {len(data)};\n")
    return header, source
