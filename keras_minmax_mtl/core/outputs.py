"""A multi-output model's outputs keyed by task: the one rule both Keras paths use (pure Python).

A dict output is keyed by its own keys, never by position; a list, a tuple or
a single tensor is keyed by the task names in order (the output layers'
names, which match `model.outputs`).

Example:

>>> keyed_by_task({"b": 2, "a": 1}, ["a", "b"])
{'a': 1, 'b': 2}
>>> keyed_by_task([1, 2], ["left", "right"])
{'left': 1, 'right': 2}
"""

__all__ = ["keyed_by_task"]


def keyed_by_task(outputs, task_names):
    """`{task: output}` for `outputs` (a dict, a list or tuple, or one tensor), in `task_names` order."""
    if isinstance(outputs, dict):
        return {task: outputs[task] for task in task_names}
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return dict(zip(task_names, outputs))
