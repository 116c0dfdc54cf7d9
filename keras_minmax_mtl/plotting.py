"""Plots of training runs (matplotlib, drawn off-screen; no global backend change)."""
import numpy as np

__all__ = ["plot_task_weights"]


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
