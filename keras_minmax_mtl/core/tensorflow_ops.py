"""`TENSORFLOW_OPS`: the names of `keras.ops` that the shared maths uses, written in TensorFlow ops.

`keras_minmax_mtl.weighting.maths` and `keras_minmax_mtl.core.loss_balance`
are written once, against an array namespace with the names of `keras.ops`;
the Keras 3 path passes `keras.ops` itself, the `tf_keras` path this object.

Example:

>>> from keras_minmax_mtl.weighting import maths
>>> maths.project_to_simplex(tf.constant([0.5, 0.9, -1.0]), TENSORFLOW_OPS).numpy()
array([0.3, 0.7, 0. ], dtype=float32)
"""
import tensorflow as tf

__all__ = ["TENSORFLOW_OPS"]


class _TensorFlowOps:
    """The names of `keras.ops` that the shared maths uses, in TensorFlow ops."""

    max = staticmethod(tf.reduce_max)
    min = staticmethod(tf.reduce_min)
    sum = staticmethod(tf.reduce_sum)
    all = staticmethod(tf.reduce_all)
    sort = staticmethod(tf.sort)  # ascending, as `keras.ops.sort`
    cumsum = staticmethod(tf.cumsum)
    maximum = staticmethod(tf.maximum)
    cast = staticmethod(tf.cast)
    log = staticmethod(tf.math.log)
    exp = staticmethod(tf.exp)
    softmax = staticmethod(tf.nn.softmax)
    where = staticmethod(tf.where)
    stack = staticmethod(tf.stack)
    logical_and = staticmethod(tf.logical_and)
    zeros_like = staticmethod(tf.zeros_like)

    @staticmethod
    def flip(x, axis):
        return tf.reverse(x, [axis])

    @staticmethod
    def shape(x):
        return tf.shape(x)  # dynamic, so that K may be unknown inside `tf.function`

    @staticmethod
    def arange(start, stop):
        return tf.range(start, stop)

    @staticmethod
    def take_along_axis(x, indices, axis):
        if axis not in (-1, x.shape.rank - 1):
            raise ValueError(f"Only the last axis is supported. Received: axis={axis}")
        return tf.gather(x, indices, batch_dims=x.shape.rank - 1)


#: The array namespace of the shared maths in TensorFlow ops (the `tf_keras` path).
TENSORFLOW_OPS = _TensorFlowOps()
