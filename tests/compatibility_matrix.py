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
_TWICE = r"The pruning wrappers of layers 'shared' \(2 calls\) run more than once per training step"
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
    ("shared_layer", "reweighted_l1"): _TWICE,
    ("shared_layer", "reweighted_filter"): _TWICE,
    ("shared_layer", "hybrid"): r"Layer 'shared' is called 2 times in the graph",
    ("bn_dropout", "task_aware"): _TASK_BRANCH,
    ("bn_dropout", "hybrid"): r"Layer 'bn' \(BatchNormalization\) has weights and is shared by "
                              r"several tasks after a hybrid layer",
    ("mixed_heads", "task_aware"): _TASK_BRANCH,
}

#: Cells that work but are not run by the suite, with the reason: {(form, column): reason}.
#: The MobileNet trunk costs seconds per compiled function; its columns that exercise
#: nothing its layers add beyond the tiny forms run only with `KMM_ALL_CELLS=1`.
_APP_COST = ("not run in the suite (a MobileNet trunk compiles for seconds); the same code "
             "path passes on the tiny forms; run with `KMM_ALL_CELLS=1`")
NOT_RUN = {(form, column): _APP_COST
           for form in ("app_nested", "app_input_tensor")
           for column in ("uw", "dwa", "minmax_exp", "sample_weight", "steps_per_execution",
                          "jit_compile", "mixed_bfloat16", "export_mobile", "export_micro",
                          "export_edgetpu", "reweighted_l1", "reweighted_filter", "dst_rigl",
                          "dst_set", "dst_paper")}
