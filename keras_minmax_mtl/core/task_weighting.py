r"""The `TaskWeighting` interface that `MultiTaskModel` is written against, and `EqualWeighting`.

A strategy is the part of multi-task training that only differs between
min-max, equal weighting, uncertainty weighting and DWA.

Every strategy is a small `tf_keras` layer (so its state is saved, restored and
mirrored with the model) with three hooks called by `MultiTaskModel.train_step`:

1. `on_step_begin(clock)` — before the forward pass;
2. `descent_loss(losses, replica_fraction)` — the scalar the network minimises,
   ``Σ_i w_i L_i`` by default, with ``w`` held fixed (no gradient flows into it);
3. `on_step_end(losses, clock)` — after the descent step, with the per-task
   losses averaged over the global batch (and all replicas) and detached.

`task_weights` is the weight vector a strategy applies, expressed so that the
weights of equal weighting are ``1/K`` (the model multiplies by its `scale`).

Adding a strategy is a new class on `TaskWeighting`; see `EqualWeighting` for
the smallest one.
"""
import collections

import tensorflow as tf

from keras_minmax_mtl.core.backend import keras, register

__all__ = ["TrainingClock", "TaskWeighting", "EqualWeighting"]

#: Where training stands when a hook is called: `step` is the number of train
#: steps already done (0 on the first), `epoch` the 0-based index of the current
#: epoch, `epoch_start` whether this is the first step of an epoch.
TrainingClock = collections.namedtuple("TrainingClock", ["step", "epoch", "epoch_start"])


class TaskWeighting(keras.layers.Layer):
    """Base class of the task-weighting strategies.

    A strategy is built for `num_tasks` tasks by `build((num_tasks,))`, which
    `MultiTaskModel` calls. Subclasses create their variables in `build` (with
    `super().build(input_shape)` last) and override the hooks they need.
    """

    #: Whether the weights live on the probability simplex and may starve a task (a weight
    #: near 0); `MultiTaskModel` then warns when a task stays starved (see `starved_tasks`).
    on_simplex = False

    def build(self, input_shape):
        self.num_tasks = int(input_shape[-1])
        super().build(input_shape)

    def state_variable(self, name, shape, initializer, dtype="float32"):
        """A non-trainable variable that every replica holds identically.

        It is written from values that are already identical on every replica
        (all-reduced losses), so the first replica's write is kept.
        """
        return self.add_weight(
            name=name,
            shape=shape,
            dtype=dtype,
            initializer=initializer,
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    @property
    def task_weights(self):
        """The weights applied to the task losses, shape `(K,)`."""
        raise NotImplementedError

    def on_step_begin(self, clock):
        """Called before the forward pass of every train step."""
        del clock  # Nothing to do by default.

    def descent_loss(self, losses, replica_fraction=1.0):
        """The scalar the network minimises: ``Σ_i w_i L_i`` with `w` fixed.

        Args:
            losses: per-task losses, shape `(K,)`, this replica's share of the
                global-batch mean.
            replica_fraction: ``1 / num_replicas``, for terms that do not come
                from the batch (they are summed over replicas with the gradients).
        """
        del replica_fraction
        weights = tf.stop_gradient(tf.cast(self.task_weights, losses.dtype))
        return tf.reduce_sum(weights * losses)

    def on_step_end(self, losses, clock):
        """Called after the descent step with the global per-task losses (detached)."""
        del losses, clock  # Nothing to do by default.

    def call(self, inputs):
        raise TypeError(f"{type(self).__name__} holds task weights; it is not called on data.")


@register
class EqualWeighting(TaskWeighting):
    r"""Equal weighting (EW): ``w_i = 1/K`` for every task, always.

    The baseline every multi-task method is compared with. With the model's
    ``scale=K`` it is the plain sum of the task losses.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=EqualWeighting())
    """

    @property
    def task_weights(self):
        return tf.fill([self.num_tasks], 1.0 / self.num_tasks)
