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
    "reweighted_l1": "`prune_reweighted_l1(base, 0.5, ...)` under min-max: every pruned layer at 50 % "
                     "(round(0.5·size) zeros, ±1 tie), `strip_pruning` computes the same, its "
                     "losses equal Keras'",
    "reweighted_filter": "`sparsity_type=\"filter\"`: round(0.5·units) units removed in every pruned "
                         "layer, stripped model as above",
    "dst_rigl": "`prune_for_dst` + `DynamicSparseTraining(method=\"rigl\")`: masks updated, every "
                "wrapped layer at 50 %, stripped model as above",
    "dst_set": "the same with `method=\"set\"`",
    "dst_paper": "the same with `method=\"paper\"` (the authors' variant, on epochs)",
    "task_aware": "`task_aware_optimize(..., sparsity=0.5)`: warm-up, grouping, a trained grouped "
                  "model within the non-zero budget",
    "hybrid": "`hybrid_at_sparsity(base, 0.5, 0.25)`: W_t = W_shared + S_t at the equal-non-zero "
              "budget, stripped model as above",
}

_NESTED = r"does not enter nested models: layer 'trunk' .* Build the trunk in the outer graph"
_NESTED_APP = r"does not enter nested models: layer 'mobilenet.*' .* Build the trunk in the outer graph"
_TASK_BRANCH = r"must end, for every task, in Dense\(hidden\) -> Dense\(output"

#: Cells refused by design: {(form, column): regex of the error message}.
REFUSED = {
    ("single", "task_aware"): r"Task-aware optimisation groups tasks: the model must have at least "
                              r"two tasks",
    ("nested_functional", "task_aware"): _NESTED,
    ("nested_functional", "hybrid"): _NESTED,
    ("sequential_trunk", "task_aware"): _NESTED,
    ("sequential_trunk", "hybrid"): _NESTED,
    ("app_nested", "task_aware"): _NESTED_APP,
    ("app_nested", "hybrid"): _NESTED_APP,
    ("app_input_tensor", "task_aware"): _TASK_BRANCH,
    ("app_input_tensor", "hybrid"): r"Layer '.*' \(BatchNormalization\) has weights and is shared by "
                                    r"several tasks after a hybrid layer",
    ("shared_layer", "hybrid"): r"Layer 'shared' is called 2 times in the graph",
    ("bn_dropout", "task_aware"): _TASK_BRANCH,
    ("bn_dropout", "hybrid"): r"Layer 'bn' \(BatchNormalization\) has weights and is shared by "
                              r"several tasks after a hybrid layer",
    ("mixed_heads", "task_aware"): _TASK_BRANCH,
}

#: Cells that work but are not run by every run of the suite, with the reason:
#: {(form, column): reason}. Each one passes with `KMM_ALL_CELLS=1` (which runs every
#: cell); the default suite runs each costly column on the forms of `COSTLY` that
#: differ for it, so that the whole suite stays within CI's time.
COSTLY = {
    "ew_step": ("dict", "nested_functional", "bn_dropout", "mixed_heads"),
    "uw": ("dict", "mixed_heads"),
    "dwa": ("list", "multi_input"),
    "minmax_exp": ("dict", "bn_dropout"),
    "sample_weight": ("dict", "multi_input", "mixed_heads"),
    "steps_per_execution": ("dict", "mixed_heads"),
    "jit_compile": ("dict", "mixed_heads"),
    "save_load": ("dict", "nested_functional"),
    "mixed_bfloat16": ("dict", "mixed_heads"),
    "export_mobile": ("dict", "nested_functional"),
    "export_micro": ("dict", "multi_input", "mixed_heads"),
    "export_edgetpu": ("dict",),
    "reweighted_l1": ("dict", "nested_functional", "shared_layer"),
    "reweighted_filter": ("nested_functional", "mixed_heads"),
    "dst_rigl": ("nested_functional", "shared_layer"),
    "dst_set": ("sequential_trunk",),
    "dst_paper": ("dict",),
    "task_aware": ("dict",),
    "hybrid": ("dict",),
}
_APP_COST = "a MobileNet trunk compiles for seconds"
NOT_RUN = {}
for _form in FORMS:
    for _column in COLUMNS:
        if (_form, _column) in REFUSED:
            continue  # refusals are fast, and always checked
        if _form.startswith("app_") and not (_form == "app_nested" and _column in (
                "keras_loss", "minmax")):
            NOT_RUN[_form, _column] = _APP_COST
        elif _column in COSTLY and _form not in COSTLY[_column]:
            NOT_RUN[_form, _column] = (f"the default suite runs `{_column}` on "
                                       f"{', '.join(COSTLY[_column])}")
