"""What the benchmark scripts share: datasets, weightings, compressions, one training run, summaries.

`compare.py` builds every run through `train_run`; a run is described by a
flat, JSON-able configuration dict, so a saved run can be matched against the
configuration asked for (resuming). The rules are those of the earlier
scripts (`seeds.py`, `reweighted_l1.py`, `dst.py`):

- same data, same initial weights per seed; Adam; only the weighting (and the
  compression) differs;
- min-max uses the paper's β = 50 (step size 0.02), γ = 5 dense and with
  reweighted ℓ1, and β = 10 (step size 0.1), γ = 5 with DST;
- reweighted ℓ1: `prune_reweighted_l1(allocation="global", rho=1e-4)`, 10
  dense + 5 reweighted + 5 retraining epochs (chosen on the validation split,
  see docs/results.md and keras_minmax_mtl/cli/reweighted.py);
- filter ℓ1: the same stages with `sparsity_type="filter"` (whole output
  units; `sparsity` is the fraction of units removed from every trunk and
  task-hidden layer), `allocation="uniform"`, ρ =
  `reweighted_cli.DEFAULT_FILTER_RHO` (1e-3, chosen on the validation split);
- DST: `prune_for_dst` + `DynamicSparseTraining(method="rigl", density="erk")`
  with RigL's defaults (update every 100 steps, drop fraction 0.3);
- task-aware (Choi et al. 2023): `TaskAwareRun` with the settings of
  `TASK_AWARE`: half the epochs warm up the standard network (with the run's
  weighting), the rest train the grouped network; `sparsity` is the budget of
  equal non-zero count to reweighted ℓ1 at the same sparsity.
- hybrid (W_t = W_shared + S_t, `keras_minmax_mtl.sparsity.hybrid`): `sparsity` is the
  equal-non-zero budget (as many non-zero kernel weights as the standard
  network pruned to `sparsity`); the first half of the epochs dense, then the
  prune, then masked training; task share, allocation and prune schedule from
  `keras_minmax_mtl/cli/hybrid.py` (chosen on the validation split).

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

from keras_minmax_mtl.cli.reweighted import DEFAULT_FILTER_RHO

WEIGHTINGS = ("minmax", "ew", "uw", "dwa")
COMPRESSIONS = ("dense", "reweighted_l1", "dst", "filter_l1", "task_aware", "hybrid")

#: Min-max ascent step (1/β) per compression; γ = 5 everywhere (the paper's values).
MINMAX_STEP_SIZE = {"dense": 0.02, "reweighted_l1": 0.02, "dst": 0.1, "filter_l1": 0.02,
                    "task_aware": 0.02, "hybrid": 0.02}
MINMAX_GAMMA = 5.0
#: Reweighted-ℓ1 settings chosen on the validation split (keras_minmax_mtl/cli/reweighted.py).
REWEIGHTED = {"rho": 1e-4, "epsilon": 1e-6, "allocation": "global"}
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
#: Reweighted-ℓ1 in filter mode: whole units, the same fraction in every pruned layer.
FILTER_L1 = {"rho": DEFAULT_FILTER_RHO, "epsilon": 1e-6, "allocation": "uniform",
             "sparsity_type": "filter"}
#: DST settings: RigL's published defaults, as in benchmarks/dst.py.
DST = {"method": "rigl", "density": "erk", "update_every": 100, "drop_fraction": 0.3}
#: Task-aware settings: the library's defaults (the initial allocation chosen on the validation
#: split, docs/results.md; the rest not tuned); re-allocation every 100 steps
#: (fewer on tiny runs: at least four re-allocations).
TASK_AWARE = {"alpha": 0.5, "similarity_threshold": 0.0, "smoothing": 0.5, "update_every": 100,
              "density": "global"}


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


DATASETS = {
    # No single-task references are published for multi_digits: Δm is not defined.
    "multi_digits": Dataset(_multi_digits_splits, _multi_digits_network,
                            lambda tasks: {t: "sparse_categorical_crossentropy" for t in tasks}),
}


def build_model(weighting, base, compression="dense"):
    """`MinMaxMultiTask` or `MultiTaskModel` with the named baseline weighting on `base`."""
    import keras_minmax_mtl as kmm

    if weighting == "minmax":
        return kmm.MinMaxMultiTask(base, step_size=MINMAX_STEP_SIZE[compression],
                                   gamma=MINMAX_GAMMA)
    weightings = {"ew": kmm.EqualWeighting, "uw": kmm.UncertaintyWeighting,
                  "dwa": kmm.DynamicWeightAverage}
    if weighting not in weightings:
        raise ValueError(f"Argument `weighting` must be one of {list(WEIGHTINGS)}. "
                         f"Received: weighting={weighting!r}")
    return kmm.MultiTaskModel(base, weighting=weightings[weighting]())


def hybrid_settings(options=None):
    """The hybrid settings: the command line's defaults, updated with `options`."""
    from keras_minmax_mtl.cli import hybrid as hybrid_cli

    settings = {"task_share": hybrid_cli.DEFAULT_TASK_SHARE,
                "allocation": hybrid_cli.DEFAULT_ALLOCATION,
                "prune_epochs": hybrid_cli.DEFAULT_PRUNE_EPOCHS}
    unknown = sorted(set(options or {}) - set(settings))
    if unknown:
        raise ValueError(f"Argument `options` must only hold {sorted(settings)}. "
                         f"Received unknown keys: {unknown}")
    return {**settings, **(options or {})}


def compress(compression, base, sparsity, seed, steps_per_epoch, epochs, options=None):
    """Wraps `base` for `compression`; returns `(network, callbacks, epochs)`.

    `epochs` is the length of a dense or DST run; a reweighted-ℓ1 run (either
    mode) lasts 10 + 5 + 5 epochs scaled to the same total (`epochs // 2`,
    `max(1, epochs // 4)`, the rest retraining). With `"filter_l1"`, `sparsity`
    is the fraction of output units removed from every pruned layer. A hybrid
    run is dense for `epochs // 2` epochs, then prunes (one-shot, or gradually
    over `prune_epochs`) and trains masked; `options` overrides the hybrid
    settings (`hybrid_settings`).
    """
    if compression in ("dense", "task_aware"):  # task_aware: see `task_aware_stage`
        return base, [], epochs
    if compression in ("reweighted_l1", "filter_l1"):
        from keras_minmax_mtl.sparsity.reweighted import prune_reweighted_l1

        if epochs < 3:
            raise ValueError(f"Argument `epochs` must be >= 3 with compression={compression!r} "
                             f"(dense, reweighted and retraining stages). Received: epochs={epochs}")
        dense, reweighted = epochs // 2, max(1, epochs // 4)
        network, callbacks = prune_reweighted_l1(
            base, sparsity, dense_steps=dense * steps_per_epoch,
            reweighted_steps=reweighted * steps_per_epoch,
            **(REWEIGHTED if compression == "reweighted_l1" else FILTER_L1))
        return network, callbacks, epochs
    if compression == "dst":
        import tensorflow_model_optimization as tfmot

        from keras_minmax_mtl.sparsity import dst

        update_every = min(DST["update_every"], max(1, (3 * epochs * steps_per_epoch) // 4))
        callback = dst.DynamicSparseTraining(
            sparsity, method=DST["method"], density=DST["density"], update_every=update_every,
            drop_fraction=DST["drop_fraction"], seed=seed)
        return (dst.prune_for_dst(base),
                [tfmot.sparsity.keras.UpdatePruningStep(), callback], epochs)
    if compression == "hybrid":
        from keras_minmax_mtl.sparsity.hybrid import hybrid_at_sparsity
        from keras_minmax_mtl.cli.hybrid import prune_steps

        settings = hybrid_settings(options)
        prune_step, end_step, frequency = prune_steps(epochs // 2, settings["prune_epochs"],
                                                      epochs, steps_per_epoch)
        network, callbacks, _ = hybrid_at_sparsity(
            base, sparsity, settings["task_share"], prune_step, end_step=end_step,
            frequency=frequency, allocation=settings["allocation"])
        return network, callbacks, epochs
    raise ValueError(f"Argument `compression` must be one of {list(COMPRESSIONS)}. "
                     f"Received: compression={compression!r}")


def task_aware_stage(model, train, sparsity, seed, steps_per_epoch, epochs):
    """Warms up the compiled `model` for `epochs // 2` epochs and groups the tasks.

    Returns `(grouped_model, callbacks, grouped_epochs, run)`.
    """
    from keras_minmax_mtl.sparsity.task_aware import TaskAwareRun

    if epochs < 2:
        raise ValueError(f"Argument `epochs` must be >= 2 with compression='task_aware' (warm-up "
                         f"and grouped stages). Received: epochs={epochs}")
    warmup = epochs // 2
    grouped_steps = (epochs - warmup) * steps_per_epoch
    run = TaskAwareRun(sparsity=sparsity, alpha=TASK_AWARE["alpha"],
                       similarity_threshold=TASK_AWARE["similarity_threshold"],
                       smoothing=TASK_AWARE["smoothing"], density=TASK_AWARE["density"], seed=seed,
                       update_every=min(TASK_AWARE["update_every"], max(1, grouped_steps // 4)))
    grouped = run.prepare(model, train, warmup, verbose=0)
    return grouped, run.callbacks, epochs - warmup, run


def achieved_sparsity(compression, model, base):
    """The sparsity a run reached: of the pruned kernels, or for hybrid the equal-non-zero one."""
    from keras_minmax_mtl.sparsity import pruning

    if compression == "dense":
        return 0.0
    if compression == "hybrid":
        from keras_minmax_mtl.sparsity import hybrid

        return hybrid.equivalent_sparsity(base, hybrid.kernel_nonzeros(model)["total"])
    return pruning.sparsity_report(model)["overall"]["sparsity"]


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
    and optionally `hybrid`, a dict of hybrid settings (`hybrid_settings`), and
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
    base, callbacks, epochs = compress(
        config["compression"], standard, config["sparsity"], config["seed"], steps,
        config["epochs"], config.get("hybrid"))
    model = build_model(config["weighting"], base, config["compression"])
    tasks = model.task_names
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]),
                  loss=data.losses(tasks), metrics={t: [data.metric] for t in tasks})
    weights = TaskWeightHistory()
    start = time.perf_counter()
    task_aware = None
    if config["compression"] == "task_aware":  # the warm-up counts in the training time
        model, callbacks, epochs, task_aware = task_aware_stage(
            model, splits["train"], config["sparsity"], config["seed"], steps, config["epochs"])
    model.fit(splits["train"], epochs=epochs, callbacks=[weights, *callbacks], verbose=0)
    seconds = time.perf_counter() - start
    result = {"config": dict(config), "task_names": tasks, "steps_per_epoch": steps,
              "train_seconds": seconds,
              "validation": evaluate(model, splits["validation"], data.metric),
              "test": evaluate(model, splits["test"], data.metric),
              "sparsity": achieved_sparsity(config["compression"], model, standard),
              "nonzero_weights": pruning.nonzero_kernel_count(model),
              "final_task_weights": [float(v) for v in np.asarray(model.task_weights)],
              "task_weight_trajectory": np.round(weights.history, 6).tolist()}
    if config.get("exports"):
        with tempfile.TemporaryDirectory() as work:
            result["exports"] = export_run(model, splits, config["exports"], work, data.metric)
        for entry in result["exports"].values():
            del entry["path"]
    if config["compression"] == "filter_l1":
        from keras_minmax_mtl.sparsity.structured import structured_report

        result["removed_units"] = structured_report(model)["overall"]["fraction"]
    if task_aware is not None:
        report = task_aware.report()
        result["task_aware"] = {"groups": report["groups"], "budget": report["budget"],
                                "final_density": report["history"][-1]["density"]}
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
