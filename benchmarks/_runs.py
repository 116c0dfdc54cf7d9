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
  see docs/results.md and keras_minmax_mtl/reweighted_cli.py);
- DST: `prune_for_dst` + `DynamicSparseTraining(method="rigl", density="erk")`
  with RigL's defaults (update every 100 steps, drop fraction 0.3);
- hybrid (W_t = W_shared + S_t, `keras_minmax_mtl.hybrid`): `sparsity` is the
  equal-non-zero budget (as many non-zero kernel weights as the standard
  network pruned to `sparsity`); the first half of the epochs dense, then the
  prune, then masked training; task share, allocation and prune schedule from
  `keras_minmax_mtl/hybrid_cli.py` (chosen on the validation split).

A dataset plugs in by adding a `Dataset` to `DATASETS`: a function that gives
the splits, a function that builds the seeded network, the losses, the metric
that the tables compare ("accuracy") and, where defined, the single-task
reference values of Δm.
"""
import dataclasses
import time

import numpy as np

WEIGHTINGS = ("minmax", "ew", "uw", "dwa")
COMPRESSIONS = ("dense", "reweighted_l1", "dst", "hybrid")

#: Min-max ascent step (1/β) per compression; γ = 5 everywhere (the paper's values).
MINMAX_STEP_SIZE = {"dense": 0.02, "reweighted_l1": 0.02, "dst": 0.1, "hybrid": 0.02}
MINMAX_GAMMA = 5.0
#: Reweighted-ℓ1 settings chosen on the validation split (keras_minmax_mtl/reweighted_cli.py).
REWEIGHTED = {"rho": 1e-4, "epsilon": 1e-6, "allocation": "global"}
#: DST settings: RigL's published defaults, as in benchmarks/dst.py.
DST = {"method": "rigl", "density": "erk", "update_every": 100, "drop_fraction": 0.3}


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
    from keras_minmax_mtl.datasets import multi_digits

    return {split: multi_digits(split, seed=seed, batch_size=batch_size,
                                num_examples=train_examples if split == "train" else None)
            for split in ("train", "validation", "test")}


def _multi_digits_network(seed):
    from keras_minmax_mtl.networks import multi_digits_network

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
    from keras_minmax_mtl import hybrid_cli

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

    `epochs` is the length of a dense or DST run; a reweighted-ℓ1 run lasts
    10 + 5 + 5 epochs scaled to the same total (`epochs // 2`, `max(1, epochs // 4)`,
    the rest retraining); a hybrid run is dense for `epochs // 2` epochs, then
    prunes (one-shot, or gradually over `prune_epochs`) and trains masked.
    `options` overrides the hybrid settings (`hybrid_settings`).
    """
    if compression == "dense":
        return base, [], epochs
    if compression == "reweighted_l1":
        from keras_minmax_mtl.reweighted import prune_reweighted_l1

        if epochs < 3:
            raise ValueError(f"Argument `epochs` must be >= 3 with compression='reweighted_l1' "
                             f"(dense, reweighted and retraining stages). Received: epochs={epochs}")
        dense, reweighted = epochs // 2, max(1, epochs // 4)
        network, callbacks = prune_reweighted_l1(
            base, sparsity, dense_steps=dense * steps_per_epoch,
            reweighted_steps=reweighted * steps_per_epoch, **REWEIGHTED)
        return network, callbacks, epochs
    if compression == "dst":
        import tensorflow_model_optimization as tfmot

        from keras_minmax_mtl import dst

        update_every = min(DST["update_every"], max(1, (3 * epochs * steps_per_epoch) // 4))
        callback = dst.DynamicSparseTraining(
            sparsity, method=DST["method"], density=DST["density"], update_every=update_every,
            drop_fraction=DST["drop_fraction"], seed=seed)
        return (dst.prune_for_dst(base),
                [tfmot.sparsity.keras.UpdatePruningStep(), callback], epochs)
    if compression == "hybrid":
        from keras_minmax_mtl.hybrid import hybrid_at_sparsity
        from keras_minmax_mtl.hybrid_cli import prune_steps

        settings = hybrid_settings(options)
        prune_step, end_step, frequency = prune_steps(epochs // 2, settings["prune_epochs"],
                                                      epochs, steps_per_epoch)
        network, callbacks, _ = hybrid_at_sparsity(
            base, sparsity, settings["task_share"], prune_step, end_step=end_step,
            frequency=frequency, allocation=settings["allocation"])
        return network, callbacks, epochs
    raise ValueError(f"Argument `compression` must be one of {list(COMPRESSIONS)}. "
                     f"Received: compression={compression!r}")


def achieved_sparsity(compression, model, base):
    """The sparsity a run reached: of the pruned kernels, or for hybrid the equal-non-zero one."""
    from keras_minmax_mtl import pruning

    if compression == "dense":
        return 0.0
    if compression == "hybrid":
        from keras_minmax_mtl import hybrid

        return hybrid.equivalent_sparsity(base, hybrid.kernel_nonzeros(model)["total"])
    return pruning.sparsity_report(model)["overall"]["sparsity"]


def evaluate(model, dataset, metric="accuracy"):
    """Per-task `metric` of `model` on `dataset`, with `worst` and `mean`."""
    logs = model.evaluate(dataset, verbose=0, return_dict=True)
    per_task = {t: float(logs[f"{t}_{metric}"]) for t in model.task_names}
    return {"tasks": per_task, "worst": min(per_task.values()),
            "mean": float(np.mean(list(per_task.values())))}


def train_run(config, return_model=False):
    """Trains and evaluates one configuration; returns the result dict (JSON-able).

    With `return_model=True`, returns `(result, trained model)`.

    `config` keys: `dataset`, `weighting`, `compression`, `seed`, `epochs`,
    `sparsity`, `batch_size`, `train_examples` (or `None`), `learning_rate`;
    optionally `hybrid`, a dict of hybrid settings (`hybrid_settings`).
    Keras state is cleared and every seed set first, so runs in one process
    do not depend on the ones before.
    """
    from keras_minmax_mtl._keras import keras
    from keras_minmax_mtl.callbacks import TaskWeightHistory

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
    model.fit(splits["train"], epochs=epochs, callbacks=[weights, *callbacks], verbose=0)
    seconds = time.perf_counter() - start
    result = {"config": dict(config), "task_names": tasks, "steps_per_epoch": steps,
              "train_seconds": seconds,
              "validation": evaluate(model, splits["validation"], data.metric),
              "test": evaluate(model, splits["test"], data.metric),
              "sparsity": achieved_sparsity(config["compression"], model, standard),
              "final_task_weights": [float(v) for v in np.asarray(model.task_weights)],
              "task_weight_trajectory": np.round(weights.history, 6).tolist()}
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
