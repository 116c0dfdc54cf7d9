"""The datasets, the networks of the benchmarks and the NYUv2 metrics.

One module per dataset, each a loader like `keras.datasets`' (NumPy arrays)
and a batched `tf.data.Dataset` (nothing is ever downloaded; see
docs/datasets.md):

- `digits`: MultiDigits, three tasks on canvases of two handwritten digits
  (shipped inside scikit-learn): `load_multi_digits`, `multi_digits`;
- `cifar100`: the paper's multi-task CIFAR-100 from a local TFDS copy:
  `load_cifar100_mtl`, `cifar100_mtl`;
- `fashion`: MultiFashion, two Fashion-MNIST items per canvas, two
  classifications and a regression, from a local copy: `load_multi_fashion`,
  `multi_fashion`;
- `nyuv2_loader`: NYUv2 in the MTAN layout: `nyuv2`;
- `nyuv2_metrics`: the NYUv2 losses and metrics;
- `networks`: the multi-task networks of the examples and benchmarks.

The loaders and their constants are importable from here:

>>> from keras_minmax_mtl.data import load_multi_digits, MULTI_DIGITS_TASKS
>>> list(MULTI_DIGITS_TASKS)
['left', 'right', 'sum']
"""
from keras_minmax_mtl.data.cifar100 import *  # noqa: F401,F403
from keras_minmax_mtl.data.cifar100 import __all__ as _cifar100_all
from keras_minmax_mtl.data.digits import *  # noqa: F401,F403
from keras_minmax_mtl.data.digits import __all__ as _digits_all
from keras_minmax_mtl.data.fashion import *  # noqa: F401,F403
from keras_minmax_mtl.data.fashion import __all__ as _fashion_all
from keras_minmax_mtl.data.nyuv2_loader import *  # noqa: F401,F403
from keras_minmax_mtl.data.nyuv2_loader import __all__ as _nyuv2_all

__all__ = [*_digits_all, *_fashion_all, *_cifar100_all, *_nyuv2_all]
