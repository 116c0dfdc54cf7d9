"""Plots of training runs (matplotlib, drawn off-screen; no global backend change)."""
import numpy as np

__all__ = ["plot_task_weights", "plot_task_aware"]


def plot_task_weights(history, task_names, path, title=None, steps_per_epoch=None):
    """Saves a PNG of the task-weight trajectories, one line per task.

    Args:
        history: array of shape `(steps, K)`, e.g. `TaskWeightHistory.history`.
        task_names: the `K` column names.
        path: where to write the PNG.
        title: the figure title. Defaults to `None` (no title).
        steps_per_epoch: when given, epochs are marked by vertical lines.

    Example:

    >>> plot_task_weights(history.history, model.task_names, "weights.png")
    """
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
    axes.set_xlabel("train step")
    axes.set_ylabel("task weight")
    if title:
        axes.set_title(title)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_task_aware(report, path, title=None):
    """Saves a PNG of a task-aware run: the task similarity, and each branch's density over steps.

    Args:
        report: `TaskAwareRun.report()` (or its JSON): `measurement` with
            `task_names` and `similarity`, `groups`, and `history`.
        path: where to write the PNG.
        title: the figure title. Defaults to `None` (no title).

    Example:

    >>> plot_task_aware(run.report(), "task_aware.png")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(report["measurement"]["task_names"])
    similarity = np.asarray(report["measurement"]["similarity"], dtype=np.float64)
    history = report["history"]
    if similarity.shape != (len(tasks), len(tasks)) or not history:
        raise ValueError(f"Argument `report` must hold a ({len(tasks)}, {len(tasks)}) similarity "
                         f"and a non-empty history. Received similarity of shape "
                         f"{similarity.shape} and {len(history)} history records.")
    figure = Figure(figsize=(9.6, 3.6), dpi=100)
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
    for k, (branch, group) in enumerate(zip(history[0]["density"], report["groups"])):
        right.step(steps, [record["density"][branch] for record in history], where="post",
                   label=f"{branch}: {', '.join(group)}", linewidth=1.5, color=f"C{k}")
    right.set_xlabel("train step")
    right.set_ylabel("branch density (kept fraction)")
    right.legend(loc="best", fontsize="small")
    right.set_title("dynamic allocation", fontsize="medium")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    return path
