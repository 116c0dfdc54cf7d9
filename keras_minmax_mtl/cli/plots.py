"""Plots of training runs (matplotlib, drawn off-screen; no global backend change)."""
import numpy as np

__all__ = ["plot_task_weights", "task_weights_figure", "plot_task_aware", "task_aware_figure",
           "plot_budget_search", "budget_search_figure", "run_title", "run_events",
           "texts_outside"]


def task_weights_figure(history, task_names, title=None, steps_per_epoch=None, events=()):
    """The figure of `plot_task_weights` (not saved): one line per task, events as vertical lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = np.asarray(history, dtype=np.float64)
    if history.ndim != 2 or history.shape[1] != len(task_names):
        raise ValueError(
            f"Argument `history` must have shape (steps, {len(task_names)}) for tasks "
            f"{list(task_names)}. Received shape {history.shape}."
        )
    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    steps = np.arange(1, len(history) + 1)
    for k, task in enumerate(task_names):
        axes.plot(steps, history[:, k], label=task, linewidth=1.5)
    if steps_per_epoch:
        for boundary in range(steps_per_epoch, len(history), steps_per_epoch):
            axes.axvline(boundary, color="0.85", linewidth=0.6, zorder=0)
    axes.axhline(1.0 / len(task_names), color="0.5", linestyle="--", linewidth=0.8,
                 label="uniform 1/K")
    for kind, (color, style) in zip(sorted({e["label"] for e in events}, key=_first_step(events)),
                                    _EVENT_STYLES):
        marked = [e["step"] for e in events if e["label"] == kind]
        for i, step in enumerate(marked):
            axes.axvline(step, color=color, linestyle=style, linewidth=1.0, alpha=0.8, zorder=1,
                         label=_event_label(kind, marked) if i == 0 else None)
    axes.set_xlabel("train step" + (" (grey lines: epochs)" if steps_per_epoch else ""))
    axes.set_ylabel("task weight")
    if title:
        axes.set_title(_wrapped(title), fontsize="medium")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure


def _wrapped(title, width=72):
    """`title` with each line longer than `width` characters broken (a 6.4-inch figure's width)."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in title.splitlines())


#: Colour and line style of each kind of event, in order of first appearance.
_EVENT_STYLES = [("black", "-"), ("tab:red", ":"), ("tab:purple", "-."), ("tab:brown", "--")]


def _first_step(events):
    return lambda kind: min(e["step"] for e in events if e["label"] == kind)


def _event_label(kind, steps):
    if len(steps) == 1:
        return f"{kind} (step {steps[0]})"
    return f"{kind} ({len(steps)}x, steps {steps[0]}-{steps[-1]})"


def plot_task_weights(history, task_names, path, title=None, steps_per_epoch=None, events=()):
    """Saves a PNG of the task-weight trajectories, one line per task.

    Args:
        history: array of shape `(steps, K)`, e.g. `TaskWeightHistory.history`.
        task_names: the `K` column names.
        path: where to write the PNG.
        title: the figure title. Defaults to `None` (no title).
        steps_per_epoch: when given, epochs are marked by vertical grey lines.
        events: `[{"step", "label"}]`, marked by vertical lines, one style and
            one legend entry per label, e.g. the hard prune of reweighted ℓ1
            or the mask updates of DST (`run_events`). Defaults to `()`.

    Example:

    >>> plot_task_weights(history.history, model.task_names, "weights.png",
    ...                   events=[{"step": 120, "label": "hard prune"}])
    """
    figure = task_weights_figure(history, task_names, title, steps_per_epoch, events)
    figure.savefig(path)
    return path


def run_title(args):
    """The title of a `kmm train` run's task-weight plot: dataset, weighting and seed; the method.

    Two lines, e.g. ``"multi_digits: minmax task weights, seed 0\\nreweighted l1
    (unstructured), 90% sparse"``.
    """
    pruning = getattr(args, "pruning", "none")
    method = {
        "none": "dense",
        "reweighted_l1": f"reweighted l1 ({getattr(args, 'sparsity_type', 'weight')}), "
                         f"{getattr(args, 'sparsity', 0):.0%} sparse",
        "dst": f"DST ({getattr(args, 'dst_method', '')}), {getattr(args, 'sparsity', 0):.0%} sparse",
        "task_aware": f"task-aware, {getattr(args, 'sparsity', 0):.0%} sparse",
        "hybrid": f"hybrid, budget of {getattr(args, 'sparsity', 0):.0%} sparse",
    }.get(pruning, pruning)
    return f"{args.dataset}: {args.weighting} task weights, seed {args.seed}\n{method}"


def run_events(args, pruning, steps_per_epoch):
    """The events of a `kmm train` run to mark on its task-weight plot: `[{"step", "label"}]`.

    Args:
        args: the run's arguments (`pruning` and the method's flags).
        pruning: the method's report (`metrics["pruning"]`), or `None`.
        steps_per_epoch: the training steps per epoch.

    Returns:
        reweighted ℓ1: the start of the reweighted stage and the hard prune;
        hybrid: the prune (and the end of a gradual one); DST: each mask
        update (`pruning["updates"]`, in epochs for `--dst-method paper`);
        task-aware: each re-allocation after the first (`pruning["report"]
        ["history"]`); dense: none. Steps count from 1, as the plot's and as
        `kmm train` prints them ("prune at step 17" after 2 epochs of 8 steps).
    """
    method = getattr(args, "pruning", "none")
    events = []
    if method == "reweighted_l1":
        if args.dense_epochs:
            events.append({"step": args.dense_epochs * steps_per_epoch + 1,
                           "label": "reweighted l1 begins"})
        events.append({"step": (args.dense_epochs + args.reweighted_epochs) * steps_per_epoch + 1,
                       "label": "hard prune"})
    elif method == "hybrid":
        dense = args.epochs // 2 if args.hybrid_dense_epochs is None else args.hybrid_dense_epochs
        events.append({"step": dense * steps_per_epoch + 1, "label": "prune"})
        if args.hybrid_prune_epochs:
            events.append({"step": (dense + args.hybrid_prune_epochs) * steps_per_epoch + 1,
                           "label": "prune ends"})
    elif method == "dst" and pruning:
        scale = steps_per_epoch if getattr(args, "dst_method", None) == "paper" else 1
        events.extend({"step": int(u["step"]) * scale, "label": "DST mask update"}
                      for u in pruning.get("updates", []))
    elif method == "task_aware" and pruning:
        history = pruning.get("report", {}).get("history", [])
        events.extend({"step": int(r["step"]), "label": "task-aware re-allocation"}
                      for r in history if int(r["step"]) > 0)
    return events


def task_aware_figure(report, title=None, last_step=None):
    """The figure of `plot_task_aware` (not saved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(report["measurement"]["task_names"])
    similarity = np.asarray(report["measurement"]["similarity"], dtype=np.float64)
    history = report["history"]
    if similarity.shape != (len(tasks), len(tasks)) or not history:
        raise ValueError(f"Argument `report` must hold a ({len(tasks)}, {len(tasks)}) similarity "
                         f"and a non-empty history. Received similarity of shape "
                         f"{similarity.shape} and {len(history)} history records.")
    figure = Figure(figsize=(9.6, 3.8), dpi=100)
    FigureCanvasAgg(figure)
    left = figure.add_subplot(1, 2, 1)
    image = left.imshow(similarity, vmin=-1, vmax=1, cmap="coolwarm")
    left.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize="small")
    left.set_yticks(range(len(tasks)), tasks, fontsize="small")
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            left.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=left, fraction=0.046)
    left.set_title("task similarity S", fontsize="medium")
    right = figure.add_subplot(1, 2, 2)
    steps = [record["step"] for record in history]
    # Each density holds until the next allocation, and the last one to the end of the run: with
    # a single allocation (a short run) a step plot of its points alone would draw nothing.
    interval = (steps[-1] - steps[0]) // (len(steps) - 1) if len(steps) > 1 else 1
    end = (last_step if last_step is not None and last_step > steps[-1]
           else steps[-1] + max(1, interval))
    for k, (branch, group) in enumerate(zip(history[0]["density"], report["groups"])):
        density = [record["density"][branch] for record in history]
        right.step([*steps, end], [*density, density[-1]], where="post",
                   label=f"{branch}: {', '.join(group)}", linewidth=1.5, color=f"C{k}")
        right.plot(steps, density, "o", markersize=4, color=f"C{k}")
    right.set_xlabel("train step (dots: allocations)")
    right.set_ylabel("branch density (kept fraction)")
    right.legend(loc="best", fontsize="small")
    right.set_title(f"dynamic allocation ({len(history)} allocation"
                    f"{'s' if len(history) != 1 else ''})", fontsize="medium")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_task_aware(report, path, title=None, last_step=None):
    """Saves a PNG of a task-aware run: the task similarity, and each branch's density over steps.

    Args:
        report: `TaskAwareRun.report()` (or its JSON): `measurement` with
            `task_names` and `similarity`, `groups`, and `history`.
        path: where to write the PNG.
        title: the figure title. Defaults to `None` (no title).
        last_step: the run's last training step: the last density is drawn
            up to it. Defaults to `None` (one allocation interval past the
            last allocation).

    Example:

    >>> plot_task_aware(run.report(), "task_aware.png")
    """
    figure = task_aware_figure(report, title, last_step)
    figure.savefig(path)
    return path


def budget_search_figure(report, title=None):
    """The figure of `plot_budget_search` (not saved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    candidates = report["candidates"]
    if not candidates:
        raise ValueError("Argument `report` must hold at least one candidate. Received none.")
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    chosen = report["chosen"]
    threshold = report["reference"] - report["max_worst_drop"] / 100.0
    for passed, color, label in ((True, "tab:green", "within budget"),
                                 (False, "tab:red", "over budget")):
        points = [c for c in candidates if c["passed"] == passed]
        if points:
            axes.plot([c["nonzero_weights"] for c in points], [c["val_worst"] for c in points],
                      "o", color=color, label=label, zorder=3)
    for order, c in enumerate(candidates):
        axes.annotate("dense" if order == 0 else f"{c['sparsity']:g}",
                      (c["nonzero_weights"], c["val_worst"]), textcoords="offset points",
                      xytext=(4, 4), fontsize="x-small")
    axes.plot([chosen["nonzero_weights"]], [chosen["val_worst"]], "o", markersize=12,
              markerfacecolor="none", markeredgecolor="black", label="chosen", zorder=4)
    axes.axhline(threshold, color="0.3", linestyle="--", linewidth=1.0,
                 label=f"budget: dense - {report['max_worst_drop']:g} point"
                       f"{'' if report['max_worst_drop'] == 1 else 's'}")
    axes.axhline(report["reference"], color="0.6", linestyle=":", linewidth=1.0,
                 label="dense worst task")
    axes.set_xscale("log")
    axes.set_xlabel("non-zero kernel weights (log scale; labels: sparsity tried)")
    axes.set_ylabel("validation worst-task accuracy")
    if title:
        axes.set_title(_wrapped(title), fontsize="medium")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def plot_budget_search(report, path, title=None):
    """Saves a PNG of a worst-task budget search: validation worst task vs size, every candidate.

    Args:
        report: `BudgetResult.to_dict()` (or its JSON): `candidates` (each
            with `nonzero_weights`, `val_worst`, `sparsity`, `passed`; the
            dense model first), `chosen`, `reference` and `max_worst_drop`.
        path: where to write the PNG.
        title: the figure title. Defaults to `None` (no title).

    The budget ``reference - max_worst_drop / 100`` is a dashed line; the
    chosen candidate is circled.

    Example:

    >>> plot_budget_search(result.to_dict(), "compress.png")
    """
    figure = budget_search_figure(report, title)
    figure.savefig(path)
    return path


def texts_outside(figure):
    """The visible texts of `figure` (titles, axis labels, legends, tick labels) that do not fit in it.

    Draws the figure and compares each text's extent with the figure's, so a
    label that `savefig` would cut off is found. Tick labels count only where
    the axis draws them (inside its view): each axis is checked as a whole.
    Returns the strings of the texts outside, and ``"<x axis>"`` (``"<y
    axis>"``) for an axis whose drawn tick labels or label stick out.
    """
    from matplotlib.axis import Axis, Tick
    from matplotlib.text import Text

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    box = figure.bbox

    def outside(extent):
        return (extent.x0 < box.x0 - 0.5 or extent.x1 > box.x1 + 0.5
                or extent.y0 < box.y0 - 0.5 or extent.y1 > box.y1 + 0.5)

    in_ticks = {id(t) for tick in figure.findobj(Tick) for t in tick.findobj(Text)}
    found = []
    for text in figure.findobj(Text):
        if (id(text) in in_ticks or not text.get_visible() or not text.get_text().strip()):
            continue
        if outside(text.get_window_extent(renderer)):
            found.append(text.get_text())
    for axes in figure.axes:
        for name, axis in (("x", axes.xaxis), ("y", axes.yaxis)):
            extent = Axis.get_tightbbox(axis, renderer)  # its drawn tick labels and its label
            if extent is not None and outside(extent):
                found.append(f"<{name} axis>")
    return found
