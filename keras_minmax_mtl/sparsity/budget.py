r"""Compression under a worst-task budget: the sparsest model whose worst task stays within it.

`compress_to_budget` trains the dense multi-task model once; the worst task's
validation accuracy is the reference :math:`a_0`. It then searches the
sparsity :math:`s` (for ``method="filter"``: the fraction of output units
removed from every pruned layer) for the largest one whose candidate passes

.. math::

    a(s) \;\ge\; a_0 - \frac{\delta}{100},
    \qquad a(s) = \min_{t \,\in\, \text{classification tasks}} \mathrm{acc}_t^{\text{val}}(s),

with :math:`\delta` = `max_worst_drop` in accuracy points. Every candidate
starts from the dense weights (a warm start: no dense stage again) and trains
with the model `build_model` makes (min-max on the command line) through the
registry's method (`keras_minmax_mtl.sparsity.methods`): reweighted ℓ1
(half the epochs reweighted, half masked retraining), its filter form, or
dynamic sparse training from magnitude masks of the dense weights
(`keras_minmax_mtl.sparsity.dst.magnitude_masks`).

The reference is a control candidate without pruning: a fresh model (a new
optimizer, uniform task weights) on the dense weights after `dense_epochs`,
trained for as many epochs as each candidate (`candidate_epochs`). Every
model compared has had the same training, the restart included; only the
pruning differs.

The search (`search_budget`) climbs a short ladder of sparsities
(`DEFAULT_LADDER`) until the first candidate that fails, then bisects between
the last pass and the first fail `bisections` times. It chooses on the
validation split only; the test split is evaluated once, for the dense model
and the chosen one. The dense model (:math:`s = 0`) passes by definition, so
when no sparser candidate passes the result is the dense model, with
`found` false (`kmm compress` says so and exits 0: the budget was honoured,
there is just nothing smaller that honours it).

The sizes are those of the exported models: a `filter` candidate's kernel
rows that read its removed units (which output 0) are set to 0
(`keras_minmax_mtl.sparsity.structured.zero_rows_of_removed_units`), as the
layer surgery of the export removes them, so its non-zero kernel weights are
those of the file's model.

This module imports TensorFlow and tfmot only inside `compress_to_budget`;
`search_budget` is pure Python.

Example:

>>> result = compress_to_budget(
...     lambda: multi_digits_network(seed=0),
...     lambda net: compiled(MinMaxMultiTask(net)),    # any compiled MultiTaskModel
...     train, validation, test, max_worst_drop=1.0)
>>> result.sparsity, result.test["drop_points"]
(0.9, {'left': 0.4, 'right': 0.9, 'sum': 0.7})
"""
import math
import time

from keras_minmax_mtl.core.checks import check_positive_int, is_finite_real, is_int
from keras_minmax_mtl.sparsity.methods import get_method

__all__ = ["DEFAULT_LADDER", "BUDGET_METHODS", "search_budget", "passes", "check_ladder",
           "budget_method", "compress_to_budget", "BudgetResult"]

#: The sparsities tried first, in order, until one fails.
DEFAULT_LADDER = (0.5, 0.75, 0.9, 0.95, 0.975)

#: `method` values and what each prunes.
BUDGET_METHODS = {
    "reweighted_l1": "reweighted l1 (single weights), warm-started: reweighted epochs, hard "
                     "prune, masked retraining",
    "filter": "reweighted l1 with whole output units (neurons, filters) removed; the sparsity "
              "is the fraction of units removed per layer",
    "dst": "dynamic sparse training (RigL) from magnitude masks of the dense weights",
}

#: Slack of the pass rule: Keras' accuracies are float32 (a spacing of 6e-8 near 0.7), so a
#: drop of exactly the budget can land 5e-8 past it; 1e-6 is one example of a million.
_TOLERANCE = 1e-6


def check_ladder(ladder):
    """The `ladder` as a tuple of floats, strictly increasing in (0, 1); else `ValueError`."""
    try:
        values = tuple(ladder)
    except TypeError:
        values = None
    if (not values or not all(is_finite_real(v) and 0.0 < v < 1.0 for v in values)
            or any(b <= a for a, b in zip(values, values[1:]))):
        raise ValueError("Argument `ladder` must be a non-empty, strictly increasing sequence of "
                         f"sparsities in (0, 1). Received: ladder={ladder!r}")
    return tuple(float(v) for v in values)


def _check_budget(max_worst_drop, bisections):
    if not is_finite_real(max_worst_drop) or max_worst_drop < 0:
        raise ValueError("Argument `max_worst_drop` must be a finite number >= 0 (accuracy "
                         f"points). Received: max_worst_drop={max_worst_drop!r}")
    if not is_int(bisections) or bisections < 0:
        raise ValueError("Argument `bisections` must be an integer >= 0. "
                         f"Received: bisections={bisections!r}")


def passes(worst, reference, max_worst_drop):
    """Whether a validation worst-task accuracy `worst` is within `max_worst_drop` points of `reference`.

    ``worst >= reference - max_worst_drop / 100``, with a 1e-6 slack:
    Keras computes the accuracies in float32, so a drop of exactly the
    budget (20 of 2 000 validation examples for 1 point) would otherwise
    fail by 5e-8.

    Example:

    >>> passes(0.790, 0.800, 1.0), passes(0.789, 0.800, 1.0)
    (True, False)
    """
    return worst >= reference - max_worst_drop / 100.0 - _TOLERANCE


def search_budget(evaluate, reference, max_worst_drop, ladder=DEFAULT_LADDER, bisections=2):
    """The ladder-then-bisection search: the largest sparsity whose candidate passes.

    Calls ``evaluate(sparsity)`` (the validation worst-task accuracy of a
    candidate trained at that sparsity) for each ladder value in order until
    one fails (`passes`); then `bisections` times at the midpoint (rounded to
    6 decimals) of the last pass (``0``, the dense model, if none) and the
    first fail, moving whichever end the result says.

    Args:
        evaluate: ``sparsity -> validation worst-task accuracy``.
        reference: the dense model's validation worst-task accuracy.
        max_worst_drop: the budget in accuracy points (1.0 = 0.01), `>= 0`.
        ladder: strictly increasing sparsities in (0, 1). Defaults to
            `DEFAULT_LADDER`.
        bisections: midpoints tried after the first fail, `>= 0`. Defaults to `2`.

    Returns:
        `(chosen, tried)`: the largest passing sparsity (``0.0`` if none
        passed) and ``[{"sparsity", "val_worst", "passed"}]`` in the order
        tried.

    Example:

    >>> search_budget(lambda s: 0.8 if s <= 0.8 else 0.5, 0.8, 1.0)[0]
    0.7875
    >>> [t["sparsity"] for t in search_budget(lambda s: 0.8 if s <= 0.8 else 0.5, 0.8, 1.0)[1]]
    [0.5, 0.75, 0.9, 0.825, 0.7875]
    """
    ladder = check_ladder(ladder)
    _check_budget(max_worst_drop, bisections)
    if not is_finite_real(reference):
        raise ValueError(f"Argument `reference` must be a finite number. Received: "
                         f"reference={reference!r}")
    tried = []

    def attempt(sparsity):
        worst = float(evaluate(sparsity))
        ok = math.isfinite(worst) and passes(worst, reference, max_worst_drop)
        tried.append({"sparsity": sparsity, "val_worst": worst, "passed": ok})
        return ok

    low, high = 0.0, None
    for sparsity in ladder:
        if attempt(sparsity):
            low = sparsity
        else:
            high = sparsity
            break
    if high is not None:
        for _ in range(bisections):
            middle = round((low + high) / 2.0, 6)
            if middle in (low, high):
                break
            if attempt(middle):
                low = middle
            else:
                high = middle
    return low, tried


def budget_method(name, sparsity, epochs, steps_per_epoch, seed=0):
    """The registry's method for a warm-started candidate: `name` of `BUDGET_METHODS`.

    reweighted ℓ1 and `filter`: no dense stage, ``max(1, epochs // 2)``
    reweighted epochs, the rest masked retraining (`epochs >= 2`); `dst`:
    RigL for `epochs` (`SparsityMethod.scaled`), with at least one mask update
    within the first 75 % of the ``epochs · steps_per_epoch`` steps, so at
    least 2 steps in all.

    Raises:
        ValueError: for an unknown `name` or `epochs` too few for the method.
    """
    if name not in BUDGET_METHODS:
        raise ValueError(f"Argument `method` must be one of {list(BUDGET_METHODS)}. "
                         f"Received: method={name!r}")
    epochs = check_positive_int(epochs, "candidate_epochs")
    if name == "dst":
        steps = epochs * steps_per_epoch
        if int(0.75 * steps) < 1:  # RigL's last update is at 75% of the steps, its first at 1
            raise ValueError(
                f"Argument `candidate_epochs` must give method='dst' at least 2 training steps (a "
                f"mask update within the first 75% of them); candidate_epochs * steps_per_epoch "
                f"= {epochs} * {steps_per_epoch} = {steps}. Received: candidate_epochs={epochs}")
        return get_method("dst").scaled(epochs, steps_per_epoch, sparsity, seed)
    if epochs < 2:
        raise ValueError(f"Argument `candidate_epochs` must be >= 2 with method={name!r} "
                         f"(reweighted and retraining epochs). Received: candidate_epochs={epochs}")
    reweighted = max(1, epochs // 2)
    return get_method("reweighted_l1")(
        sparsity=sparsity, seed=seed, dense_epochs=0, reweighted_epochs=reweighted,
        retrain_epochs=epochs - reweighted,
        sparsity_type="filter" if name == "filter" else "unstructured")


def _accuracies(logs, tasks):
    """`{task: accuracy}` of the tasks with an `accuracy` metric, `{task: mae}` of those with `mae`."""
    accuracy = {t: float(logs[f"{t}_accuracy"]) for t in tasks if f"{t}_accuracy" in logs}
    errors = {t: float(logs[f"{t}_mae"]) for t in tasks if f"{t}_mae" in logs}
    return accuracy, errors


class BudgetResult:
    """What `compress_to_budget` found.

    Attributes:
        method: the `BUDGET_METHODS` name.
        max_worst_drop: the budget, in accuracy points.
        reference: the dense model's validation worst-task accuracy, and
            `reference_task` its task.
        candidates: ``[{"sparsity", "val_accuracy", "val_mae", "val_worst",
            "worst_task", "passed", "achieved_sparsity", "nonzero_weights",
            "seconds"}]``: the dense model first (sparsity 0), then every
            candidate in the order tried.
        sparsity: the chosen sparsity (``0.0``: the dense model).
        found: whether a sparser model than the dense one passed.
        model: the chosen model, without pruning wrappers, compiled like the
            dense one; `dense_model` the dense model.
        test: ``{"dense": {task: accuracy}, "chosen": {...}, "drop_points":
            {task: (dense - chosen) * 100}, "dense_mae", "chosen_mae",
            "worst_task", "worst_drop_points"}`` on the test split.
        seconds: wall time of the whole call.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @property
    def chosen(self):
        """The chosen candidate's record (the dense model's if none passed)."""
        return max((c for c in self.candidates if c["passed"]), key=lambda c: c["sparsity"])

    def to_dict(self):
        """Everything but the models, JSON-able."""
        return {key: value for key, value in self.__dict__.items()
                if key not in ("model", "dense_model")} | {"chosen": self.chosen}


def compress_to_budget(build_network, build_model, train, validation, test, max_worst_drop=1.0,
                       method="reweighted_l1", dense_epochs=10, candidate_epochs=6,
                       ladder=DEFAULT_LADDER, bisections=2, seed=0, log=None):
    """The sparsest model whose validation worst task is within `max_worst_drop` points of dense.

    Args:
        build_network: ``() -> network``: a fresh, uncompiled Functional base
            network, the same architecture at every call (its weights are
            overwritten by the dense ones for each candidate).
        build_model: ``network -> model``: the compiled `MultiTaskModel` to
            train on it (e.g. a compiled `MinMaxMultiTask(network)`), with an
            ``"accuracy"`` metric on each classification task (the worst task
            is over those).
        train, validation, test: `tf.data.Dataset`s of ``(x, {task: y})``
            batches, the training one of known length.
        max_worst_drop: the budget in accuracy points, `>= 0`. Defaults to `1.0`.
        method: a `BUDGET_METHODS` name. Defaults to `"reweighted_l1"`.
        dense_epochs: epochs of the dense model before the candidates branch
            off (the dense reference is the control that trains
            `candidate_epochs` more from there, as each candidate).
            Defaults to `10`.
        candidate_epochs: epochs of each candidate from the dense weights
            (`budget_method`). Defaults to `6`.
        ladder: the sparsities of the ladder (`search_budget`). Defaults to
            `DEFAULT_LADDER`.
        bisections: midpoints after the first fail. Defaults to `2`.
        seed: the seed of the methods (DST's growth). Defaults to `0`.
        log: ``str -> None``, called with one line after the dense model and
            after each candidate (sparsity, validation worst, pass/fail,
            seconds). Defaults to `None` (silent).

    Returns:
        A `BudgetResult`.

    Raises:
        ValueError: a bad argument, or a model without an accuracy metric.
    """
    from keras_minmax_mtl.sparsity.dst import magnitude_masks
    from keras_minmax_mtl.sparsity.methods import steps_per_epoch as count_steps
    from keras_minmax_mtl.sparsity.pruning import nonzero_kernel_count, sparsity_report, strip_pruning
    from keras_minmax_mtl.sparsity.structured import zero_rows_of_removed_units

    ladder = check_ladder(ladder)
    _check_budget(max_worst_drop, bisections)
    dense_epochs = check_positive_int(dense_epochs, "dense_epochs")
    steps = count_steps(train)
    budget_method(method, ladder[0], candidate_epochs, steps, seed)  # checks before training
    log = log or (lambda line: None)
    start = time.perf_counter()

    def measure(model, sparsity, seconds, achieved):
        logs = model.evaluate(validation, verbose=0, return_dict=True)
        accuracy, errors = _accuracies(logs, model.task_names)
        if not accuracy:
            raise ValueError("`compress_to_budget` needs an 'accuracy' metric on at least one "
                             f"task of `build_model`'s model. Received metrics {sorted(logs)}")
        worst_task = min(accuracy, key=accuracy.get)
        return {"sparsity": sparsity, "val_accuracy": accuracy, "val_mae": errors,
                "val_worst": accuracy[worst_task], "worst_task": worst_task,
                "achieved_sparsity": achieved, "nonzero_weights": nonzero_kernel_count(model),
                "seconds": seconds}

    network = build_network()
    dense = build_model(network)
    sample = next(iter(validation))[0]  # a batch of inputs (`zero_rows_of_removed_units`)
    began = time.perf_counter()
    dense.fit(train, epochs=dense_epochs, verbose=0)
    dense_weights = network.get_weights()  # where every candidate starts
    # The control: a candidate without pruning. A fresh model on the dense weights (a new
    # optimizer, uniform task weights) trains as many epochs as each candidate, so the reference
    # has had the same training, restart included, as every model measured against it.
    candidate = budget_method(method, ladder[0], candidate_epochs, steps, seed)
    control = build_network()
    control.set_weights(dense_weights)
    dense = build_model(control)
    dense.fit(train, epochs=candidate.epochs, verbose=0)
    record = measure(dense, 0.0, time.perf_counter() - began, 0.0)
    record["passed"] = True
    reference, reference_task = record["val_worst"], record["worst_task"]
    candidates, best = [record], {"sparsity": 0.0, "model": dense}
    log(f"dense ({dense_epochs} + {candidate.epochs} epochs, the control): val worst {reference:.4f} "
        f"({reference_task}), {record['nonzero_weights']} "
        f"non-zero kernel weights, budget >= {reference - max_worst_drop / 100:.4f}  "
        f"{record['seconds']:.1f}s (elapsed {time.perf_counter() - start:.1f}s)")

    def evaluate(sparsity):
        began = time.perf_counter()
        base = build_network()
        base.set_weights(dense_weights)
        chosen = budget_method(method, sparsity, candidate_epochs, steps, seed)
        wrapped = chosen.wrap(base, steps)
        if method == "dst":
            magnitude_masks(wrapped, sparsity, chosen.density)
        model = chosen.prepare(build_model(wrapped), train)
        model.fit(train, epochs=chosen.epochs, callbacks=chosen.callbacks, verbose=0)
        if method == "filter":  # the rows reading removed units: 0, as in the exported file
            zero_rows_of_removed_units(model, sample)
        achieved = (chosen.extras(model).get("removed_units") if method == "filter"
                    else sparsity_report(model)["overall"]["sparsity"])
        record = measure(model, sparsity, time.perf_counter() - began, achieved)
        record["passed"] = passes(record["val_worst"], reference, max_worst_drop)
        candidates.append(record)
        if record["passed"]:  # the search only climbs: the last pass is the one it chooses
            best.update(sparsity=sparsity, model=model)
        log(f"candidate {len(candidates) - 1}: sparsity {sparsity:.4f}  val worst "
            f"{record['val_worst']:.4f} ({record['worst_task']})  drop "
            f"{100 * (reference - record['val_worst']):+.2f} points  "
            f"{'pass' if record['passed'] else 'FAIL'}  {record['seconds']:.1f}s (elapsed "
            f"{time.perf_counter() - start:.1f}s)")
        return record["val_worst"]

    sparsity, _ = search_budget(evaluate, reference, max_worst_drop, ladder, bisections)
    model = dense
    if sparsity > 0.0:
        model = strip_pruning(best["model"])
        model.compile_from_config(best["model"].get_compile_config())
    dense_test, dense_mae = _accuracies(dense.evaluate(test, verbose=0, return_dict=True),
                                        dense.task_names)
    chosen_test, chosen_mae = _accuracies(model.evaluate(test, verbose=0, return_dict=True),
                                          model.task_names)
    drop = {task: 100.0 * (dense_test[task] - chosen_test[task]) for task in dense_test}
    worst_task = min(chosen_test, key=chosen_test.get)
    return BudgetResult(
        method=method, max_worst_drop=float(max_worst_drop), reference=reference,
        reference_task=reference_task, candidates=candidates, sparsity=sparsity,
        found=sparsity > 0.0, model=model, dense_model=dense,
        test={"dense": dense_test, "chosen": chosen_test, "drop_points": drop,
              "dense_mae": dense_mae, "chosen_mae": chosen_mae, "worst_task": worst_task,
              "worst_drop_points": 100.0 * (min(dense_test.values()) - chosen_test[worst_task])},
        seconds=time.perf_counter() - start,
        settings={"dense_epochs": dense_epochs, "candidate_epochs": candidate_epochs,
                  "ladder": list(ladder), "bisections": bisections, "seed": seed,
                  "steps_per_epoch": steps})
