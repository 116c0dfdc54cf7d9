"""The compatibility matrix: model forms × training options and methods, and what each cell does.

`tests/test_conformance.py` runs every cell: a cell marked `WORKS` is checked
by a real assertion (its loss equals the one plain `tf_keras` reports, its
sparsity equals the target, its exported file is verified...), a cell listed
in `REFUSED` must fail at construction or compile time with an error whose
message matches the pattern given. `docs/make_compatibility.py` renders this
file as `docs/compatibility.md`, and the suite checks that the page is fresh.

Plain data, no imports of the package, so that the docs script can read it.
"""

#: Model forms users write: {name: description}.
FORMS = {
    "dict": "dict outputs `{task: tensor}` (task names = the keys)",
    "list": "list outputs (task names = the output layers' names)",
    "tuple": "tuple outputs",
    "single": "one output (K = 1)",
    "multi_input": "dict inputs `{name: Input}`",
    "nested_functional": "a Functional trunk called as a layer (`h = trunk(inp)`)",
    "sequential_trunk": "a `keras.Sequential` trunk called as a layer",
    "app_nested": "`tf_keras.applications.MobileNet` trunk (alpha 0.25, 32×32) called as a layer",
    "app_input_tensor": "`tf_keras.applications.MobileNet(input_tensor=...)` trunk",
    "shared_layer": "one layer shared by two task branches",
    "bn_dropout": "BatchNormalization and Dropout in the trunk",
    "mixed_heads": "classification + regression + per-pixel segmentation heads",
}

#: Columns: {name: description}.
COLUMNS = {
    "keras_loss": "each task's loss equals plain `tf_keras`'s for the same `compile(loss=...)` (≤ 1e-6)",
    "ew_step": "one SGD step of `MultiTaskModel(EqualWeighting(), scale=\"num_tasks\")` equals one "
               "step of plain `tf_keras` on the summed losses (≤ 1e-6)",
    "uw": "`UncertaintyWeighting` trains (finite, moved), losses still equal Keras'",
    "dwa": "`DynamicWeightAverage` trains, weights on the simplex, losses still equal Keras'",
    "minmax": "`MinMaxMultiTask` (projected ascent), frozen network: the task weights equal the "
              "ascent rule applied to each step's losses (≤ 1e-5), moved towards the worst task",
    "minmax_exp": "`MinMaxMultiTask(ascent=\"exponentiated\")`: as above",
    "sample_weight": "sample weights: each task's loss equals Keras' with the same weights",
    "steps_per_execution": "`compile(steps_per_execution=2)` gives the same weights as 1 (≤ 1e-6)",
    "jit_compile": "`compile(jit_compile=True)` gives the same weights as without (≤ 1e-5; on the "
                   "MobileNet trunks, whose BatchNorm on tiny batches amplifies XLA's other "
                   "summation order, the same first-step losses, ≤ 1e-4 relative)",
    "save_load": "save → load → continue equals an uninterrupted run (bitwise; with Dropout, "
                 "whose random stream restarts on load as in Keras, the state is restored bitwise)",
    "mixed_bfloat16": "`mixed_bfloat16` policy: each task's loss equals Keras' (bfloat16 tolerance, "
                      "1e-2), training stays finite",
    "export_mobile": "`export_tflite(model, target=\"mobile\")` (float): the file's outputs are the "
                     "tasks by name, within 1e-4·(1 + |y|) of Keras in LiteRT",
    "export_micro": "`target=\"micro\"` (full int8): verified in TFLite Micro, top-1 agreement ≥ 0.9 (int8 ties excepted)",
    "export_edgetpu": "`target=\"edgetpu\"` (full int8, the compiler's rules): verified, top-1 ≥ 0.9 (ties excepted)",
}

#: Cells refused by design: {(form, column): regex of the error message}.
REFUSED = {}

#: Cells that work but are not run by the suite, with the reason: {(form, column): reason}.
#: The MobileNet trunk costs seconds per compiled function; its columns that exercise
#: nothing its layers add beyond the tiny forms run only with `KMM_ALL_CELLS=1`.
_APP_COST = ("not run in the suite (a MobileNet trunk compiles for seconds); the same code "
             "path passes on the tiny forms; run with `KMM_ALL_CELLS=1`")
NOT_RUN = {(form, column): _APP_COST
           for form in ("app_nested", "app_input_tensor")
           for column in ("uw", "dwa", "minmax_exp", "sample_weight", "steps_per_execution",
                          "jit_compile", "mixed_bfloat16", "export_mobile", "export_micro",
                          "export_edgetpu")}
