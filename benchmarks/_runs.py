"""What the benchmark scripts share: datasets, weightings, compressions, one training run, summaries.

`compare.py` builds every run through `train_run`; a run is described by a
flat, JSON-able configuration dict, so a saved run can be matched against the
configuration asked for (resuming). The rules are those of the earlier
scripts (`seeds.py`, `reweighted_l1.py`, `dst.py`):

- same data, same initial weights per seed; Adam; only the weighting (and the
  compression) differs;
- min-max uses the paper's β = 50 (step size 0.02), γ = 5 dense and with
  reweighted ℓ1, and β = 10 (step size 0.1), γ = 5 with DST;

Every compression is a method of the registry `keras_minmax_mtl.sparsity.methods`
(the one `kmm train --pruning` runs) at the command line's defaults, its stages
scaled to the run's epochs by `SparsityMethod.scaled`:

- reweighted ℓ1: `prune_reweighted_l1(allocation="global", rho=1e-4)`, 10
  dense + 5 reweighted + 5 retraining epochs scaled to the run (chosen on the
  validation split, see docs/results.md and `methods.ReweightedL1`);
- filter ℓ1: the same method and stages with `sparsity_type="filter"` (whole
  output units; `sparsity` is the fraction of units removed from every trunk
  and task-hidden layer), `allocation="uniform"`, ρ =
  `methods.ReweightedL1.FILTER_RHO` (1e-3, chosen on the validation split);
- DST: `prune_for_dst` + `DynamicSparseTraining(method="rigl", density="erk")`
  with RigL's defaults (update every 100 steps, drop fraction 0.3), at the
  run's `learning_rate`. On multi_digits DST from scratch does far better at
  Adam 1e-2 and with `density="er"` (chosen on the validation split: worst
  task 0.19 on test at 1e-3 with ERK, 0.81 at 1e-2 with ER), and 1e-2 also
  beats 1e-3 for dense and reweighted ℓ1 (seed 0: docs/dst.md, "Why DST from
  scratch lagged");
- task-aware (Choi et al. 2023): `TaskAwareRun` at the library's defaults:
  half the epochs warm up the standard network (with the run's weighting),
  the rest train the grouped network; `sparsity` is the budget of equal
  non-zero count to reweighted ℓ1 at the same sparsity.
- hybrid (W_t = W_shared + S_t, `keras_minmax_mtl.sparsity.hybrid`): `sparsity` is the
  equal-non-zero budget (as many non-zero kernel weights as the standard
  network pruned to `sparsity`); the first half of the epochs dense, then the
  prune, then masked training; task share, allocation and prune schedule from
  `methods.Hybrid` (chosen on the validation split).

A method added to the registry is a compression here under its own name.

A dataset plugs in by adding a `Dataset` to `DATASETS`: a function that gives
the splits, a function that builds the seeded network, the losses, the metric
that the tables compare ("accuracy") and, where defined, the single-task
reference values of Δm.
"""
import dataclasses
import pathlib
import tempfile
import time

import numpy as np

from keras_minmax_mtl.sparsity.methods import METHODS, get_method

WEIGHTINGS = ("minmax", "ew", "uw", "dwa")
#: The benchmarks' names that are not a registered method's own: `{name: (method, options)}`.
VARIANTS = {"dense": ("none", {}), "filter_l1": ("reweighted_l1", {"sparsity_type": "filter"})}


def compressions():
    """Every registered method (`none` as `dense`) and filter ℓ1 after DST, in registry order."""
    names = ["dense" if name == "none" else name for name in METHODS]
    after = names.index("dst") + 1
    return tuple(names[:after] + ["filter_l1"] + names[after:])


#: `compressions()` when the benchmarks start: the order `compare.py` trains them in (that of
#: the earlier tables).
COMPRESSIONS = compressions()

#: Min-max ascent step (1/β) per compression (0.02 where not listed); γ = 5 everywhere (the
#: paper's values).
MINMAX_STEP_SIZE = {"dense": 0.02, "reweighted_l1": 0.02, "dst": 0.1, "filter_l1": 0.02,
                    "task_aware": 0.02, "hybrid": 0.02}
MINMAX_GAMMA = 5.0
#: The exports a run can make (`config["exports"]`): `export_tflite` keyword arguments.
EXPORTS = {
    "mobile_float": {"target": "mobile", "quantization": "float"},
    "mobile_int8": {"target": "mobile", "quantization": "int8"},
    "micro_int8": {"target": "micro"},
    # The same micro file without the layer surgery: removed units stay as zeros at full size.
    "micro_int8_unshrunk": {"target": "micro", "structured": False},
}
#: Micro invoke latency: blocks × invokes per block, alternating between the micro files.
MICRO_LATENCY_BLOCKS, MICRO_LATENCY_INVOKES = 7, 100


@dataclasses.dataclass(frozen=True)
class Dataset:
    """How a benchmark reaches one dataset.

    Attributes:
        splits: `f(seed, batch_size, train_examples) -> {"train", "validation", "test"}`
            batched `tf.data` pipelines.
        network: `f(seed) -> Functional model` whose outputs are named after the tasks.
        losses: `f(task_names) -> {task: loss}`.
        metric: the per-task metric the tables compare (higher is better).
        reference: single-task reference values of `metric` per task for Δm, or
            `None` where Δm is not defined.
    """

    splits: object
    network: object
    losses: object
    metric: str = "accuracy"
    reference: dict = None


def _multi_digits_splits(seed, batch_size, train_examples):
    from keras_minmax_mtl.data import multi_digits

    return {split: multi_digits(split, seed=seed, batch_size=batch_size,
                                num_examples=train_examples if split == "train" else None)
            for split in ("train", "validation", "test")}


def _multi_digits_network(seed):
    from keras_minmax_mtl.data.networks import multi_digits_network

    return multi_digits_network(seed=seed)


#: The classification tasks of MultiFashion: the usual two-item construction (Sener & Koltun 2018).
#: The benchmarks that compare accuracies leave out the `ink` regression (its metric is an error).
MULTI_FASHION_CLASSIFICATION = ("left", "right")


def _multi_fashion_splits(seed, batch_size, train_examples):
    from keras_minmax_mtl.data.fashion import multi_fashion

    def classification(x, labels):
        return x, {t: labels[t] for t in MULTI_FASHION_CLASSIFICATION}

    return {split: multi_fashion(split, seed=seed, batch_size=batch_size,
                                 num_examples=train_examples if split == "train" else None
                                 ).map(classification)
            for split in ("train", "validation", "test")}


def _multi_fashion_network(seed):
    """`multi_fashion_network(seed=...)` with its classification outputs only (no `ink` head)."""
    from keras_minmax_mtl.core.backend import keras
    from keras_minmax_mtl.data.networks import multi_fashion_network

    full = multi_fashion_network(seed=seed)
    return keras.Model(full.inputs, [full.get_layer(t).output for t in MULTI_FASHION_CLASSIFICATION],
                       name="multi_fashion_classification_net")


def _cross_entropies(tasks):
    return {t: "sparse_categorical_crossentropy" for t in tasks}


DATASETS = {
    # No single-task references are published for multi_digits: Δm is not defined.
    "multi_digits": Dataset(_multi_digits_splits, _multi_digits_network, _cross_entropies),
    # MultiFashion's two 10-way tasks (Debian's Fashion-MNIST under /usr/share/datasets).
    "multi_fashion": Dataset(_multi_fashion_splits, _multi_fashion_network, _cross_entropies),
}


def build_model(weighting, base, compression="dense", minmax=None):
    """`MinMaxMultiTask` or `MultiTaskModel` with the named baseline weighting on `base`.

    `minmax` overrides the min-max settings (`{"step_size": 1/β, "gamma": γ}`).
    """
    import keras_minmax_mtl as kmm

    if weighting == "minmax":
        settings = {"step_size": MINMAX_STEP_SIZE.get(compression, 0.02), "gamma": MINMAX_GAMMA,
                    **(minmax or {})}
        return kmm.MinMaxMultiTask(base, **settings)
    weightings = {"ew": kmm.EqualWeighting, "uw": kmm.UncertaintyWeighting,
                  "dwa": kmm.DynamicWeightAverage}
    if weighting not in weightings:
        raise ValueError(f"Argument `weighting` must be one of {list(WEIGHTINGS)}. "
                         f"Received: weighting={weighting!r}")
    return kmm.MultiTaskModel(base, weighting=weightings[weighting]())


#: The keys of a run's `config["hybrid"]` and the `methods.Hybrid` options they set.
HYBRID_OPTIONS = {"task_share": "task_share", "allocation": "hybrid_allocation",
                  "prune_epochs": "hybrid_prune_epochs"}


def hybrid_settings(options=None):
    """The hybrid settings: the command line's defaults, updated with `options`."""
    hybrid = get_method("hybrid")
    settings = {key: hybrid.option(dest).default for key, dest in HYBRID_OPTIONS.items()}
    unknown = sorted(set(options or {}) - set(settings))
    if unknown:
        raise ValueError(f"Argument `options` must only hold {sorted(settings)}. "
                         f"Received unknown keys: {unknown}")
    return {**settings, **(options or {})}


def compression_method(compression, sparsity, seed, steps_per_epoch, epochs, options=None):
    """The registered method (`SparsityMethod`) of `compression` for a run of `epochs` epochs.

    `epochs` is the length of the whole run: a reweighted-ℓ1 run (either
    mode) lasts 10 + 5 + 5 epochs scaled to the same total (`epochs // 2`,
    `max(1, epochs // 4)`, the rest retraining), a task-aware run warms up for
    `epochs // 2` (`SparsityMethod.scaled`). With `"filter_l1"`, `sparsity`
    is the fraction of output units removed from every pruned layer. A hybrid
    run is dense for `epochs // 2` epochs, then prunes (one-shot, or gradually
    over `prune_epochs`) and trains masked; `options` overrides the hybrid
    settings (`hybrid_settings`); for the other methods `options` are the
    method's own keyword arguments (e.g. `{"rho": 1e-3}`).
    """
    if compression not in compressions():
        raise ValueError(f"Argument `compression` must be one of {list(compressions())}. "
                         f"Received: compression={compression!r}")
    name, settings = VARIANTS.get(compression, (compression, {}))
    if name == "hybrid":
        settings = {HYBRID_OPTIONS[key]: value for key, value in hybrid_settings(options).items()}
    elif options:
        settings = {**settings, **options}  # the method's own options, e.g. `rho`
    return get_method(name).scaled(epochs, steps_per_epoch, sparsity, seed, **settings)


def evaluate(model, dataset, metric="accuracy"):
    """Per-task `metric` of `model` on `dataset`, with `worst` and `mean`."""
    logs = model.evaluate(dataset, verbose=0, return_dict=True)
    return _task_summary({t: float(logs[f"{t}_{metric}"]) for t in model.task_names})


def _task_summary(per_task):
    """`{"tasks", "worst", "mean"}` of a per-task `{task: value}` dict."""
    return {"tasks": per_task, "worst": min(per_task.values()),
            "mean": float(np.mean(list(per_task.values())))}


def split_arrays(dataset):
    """`(x, y)` numpy arrays (or dicts of them) of a batched `(x, y)` dataset, in order."""
    import tensorflow as tf

    return tf.nest.map_structure(
        lambda *parts: np.concatenate(parts), *[(x, y) for x, y in dataset.as_numpy_iterator()])


def export_run(model, splits, names, directory, metric="accuracy"):
    """Exports `model` once per name of `EXPORTS` into `directory` and runs each file on the test split.

    Full-int8 calibration uses the first 256 training inputs. Returns, per
    export, the file's `bytes`, `gzip_bytes`, `storage`, `path` and its `test`
    accuracy (`tasks`, `worst`, `mean`; the argmax of the file's outputs
    against the labels), run in the runtime of its target (TFLite Micro for
    `micro`, LiteRT otherwise). Micro files also get `invoke_seconds`: the
    median over `MICRO_LATENCY_BLOCKS` blocks of the median of
    `MICRO_LATENCY_INVOKES` invokes on the first test sample
    (`runtimes.micro_invoke_seconds`), the blocks alternating between the micro
    files of the call, so their ratio is measured in one process under the
    same load.
    """
    from keras_minmax_mtl.export import runtimes
    from keras_minmax_mtl.export.tflite import export_tflite

    if metric != "accuracy":
        raise ValueError(f"Exports are scored by top-1 accuracy only. Received: metric={metric!r}")
    unknown = sorted(set(names) - set(EXPORTS))
    if unknown:
        raise ValueError(f"Argument `names` must hold names of {list(EXPORTS)}. "
                         f"Received unknown names {unknown}")
    x_train, _ = split_arrays(splits["train"])
    x_test, y_test = split_arrays(splits["test"])
    representative = x_train[:256] if not isinstance(x_train, dict) else {
        k: v[:256] for k, v in x_train.items()}
    files = {}
    for name in names:
        kwargs = EXPORTS[name]
        path = pathlib.Path(directory) / f"{name}.tflite"
        report = export_tflite(model, path, representative_data=representative, **kwargs)
        if kwargs["target"] == "micro":
            outputs, _ = runtimes.run_micro(path, x_test)
        else:
            outputs = runtimes.run_litert(path, x_test)
        per_task = {t: float(np.mean(np.argmax(outputs[t], -1) == y_test[t])) for t in y_test}
        files[name] = {"path": str(path), "bytes": report["bytes"],
                       "gzip_bytes": report["gzip_bytes"], "storage": report["storage"],
                       "test": _task_summary(per_task)}
    micro = [name for name in names if EXPORTS[name]["target"] == "micro"]
    first = x_test[:1] if not isinstance(x_test, dict) else {k: v[:1] for k, v in x_test.items()}
    blocks = {name: [] for name in micro}
    for _ in range(MICRO_LATENCY_BLOCKS if micro else 0):
        for name in micro:
            blocks[name].append(runtimes.micro_invoke_seconds(
                files[name]["path"], first, repeats=MICRO_LATENCY_INVOKES))
    for name in micro:
        files[name]["invoke_seconds"] = float(np.median(blocks[name]))
    return files


def train_run(config, return_model=False):
    """Trains and evaluates one configuration; returns the result dict (JSON-able).

    With `return_model=True`, returns `(result, trained model)`.

    `config` keys: `dataset`, `weighting`, `compression`, `seed`, `epochs`,
    `sparsity`, `batch_size`, `train_examples` (or `None`), `learning_rate`,
    and optionally `hybrid`, a dict of hybrid settings (`hybrid_settings`),
    `method_options` (the compression method's keyword arguments), `minmax`
    (`build_model`'s min-max settings), and
    `exports` (names of `EXPORTS`: each file is written to a temporary folder
    and its size and test accuracy go to `result["exports"]`).
    Keras state is cleared and every seed set first, so runs in one process
    do not depend on the ones before.
    """
    from keras_minmax_mtl.sparsity import pruning
    from keras_minmax_mtl.core.backend import keras
    from keras_minmax_mtl.core.callbacks import TaskWeightHistory

    keras.backend.clear_session()
    keras.utils.set_random_seed(config["seed"])
    data = DATASETS[config["dataset"]]
    splits = data.splits(config["seed"], config["batch_size"], config["train_examples"])
    steps = int(splits["train"].cardinality())
    standard = data.network(config["seed"])
    method = compression_method(config["compression"], config["sparsity"], config["seed"], steps,
                                config["epochs"],
                                config.get("hybrid") or config.get("method_options"))
    base = method.wrap(standard, steps)
    model = build_model(config["weighting"], base, config["compression"], config.get("minmax"))
    tasks = model.task_names
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]),
                  loss=data.losses(tasks), metrics={t: [data.metric] for t in tasks})
    weights = TaskWeightHistory()
    start = time.perf_counter()
    model = method.prepare(model, splits["train"])  # task-aware: the warm-up counts in the time
    model.fit(splits["train"], epochs=method.epochs, callbacks=[weights, *method.callbacks],
              verbose=0)
    seconds = time.perf_counter() - start
    result = {"config": dict(config), "task_names": tasks, "steps_per_epoch": steps,
              "train_seconds": seconds,
              "validation": evaluate(model, splits["validation"], data.metric),
              "test": evaluate(model, splits["test"], data.metric),
              "sparsity": method.achieved_sparsity(model, standard),
              "nonzero_weights": pruning.nonzero_kernel_count(model),
              "final_task_weights": [float(v) for v in np.asarray(model.task_weights)],
              "task_weight_trajectory": np.round(weights.history, 6).tolist()}
    if config.get("exports"):
        with tempfile.TemporaryDirectory() as work:
            result["exports"] = export_run(model, splits, config["exports"], work, data.metric)
        for entry in result["exports"].values():
            del entry["path"]
    result.update(method.extras(model))  # filter ℓ1: removed_units; task-aware: its groups
    if data.reference is not None:
        result["test"]["delta_m"] = delta_m(result["test"]["tasks"], data.reference)
    return (result, model) if return_model else result


def delta_m(values, reference):
    r"""Δm % of per-task `values` (higher is better) against single-task `reference`.

    .. math:: \Delta_m = \frac{100}{K}\sum_k \frac{v_k - r_k}{r_k}
    """
    return float(100 * np.mean([(values[t] - reference[t]) / reference[t] for t in reference]))


def mean_std(values):
    """`{"mean", "std", "values"}` over seeds; std with ddof=1 (0 for one value)."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "values": values.tolist()}
