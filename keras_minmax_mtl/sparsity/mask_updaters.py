r"""Prune-and-grow rules of dynamic sparse training: one small class per method.

A `MaskUpdater` turns a layer's mask into a new one in two hooks:

- `drop_scores`: the active weights with the *lowest* scores are dropped;
- `grow_scores`: among the weights left inactive, those with the *highest*
  scores are grown (a weight dropped in this update may be grown back, as in
  RigL; it then keeps its value).

`update` keeps the ``n_active − n_drop`` active weights of highest drop score
and grows ``n_grow`` weights; ties are broken by a random key drawn from the
`numpy.random.Generator` it is given, so a seeded generator makes the result
reproducible. The methods (Evci et al., "Rigging the Lottery", ICML 2020;
Mocanu et al., "Scalable training of artificial neural networks with
adaptive sparse connectivity", Nature Communications 2018):

======================  ==================  ===========================
class                   drop score          grow score
======================  ==================  ===========================
`RigLUpdater`           ``|w|``             ``|∂L/∂w|``
`SETUpdater`            ``|w|``             uniform random
======================  ==================  ===========================

`DynamicSparseTraining(method=RigLUpdater())` takes one (or a name). The
updaters are registered for Keras serialization (`get_config` is their
constructor arguments; these two have none).

Example:

>>> updater = RigLUpdater()
>>> new_mask = updater.update(weight, mask, gradient, n_drop=3, n_grow=3,
...                           rng=np.random.default_rng(0))
"""
import numpy as np

from keras_minmax_mtl.core.backend import register
from keras_minmax_mtl.sparsity.maths import prune_and_grow

__all__ = ["MaskUpdater", "RigLUpdater", "SETUpdater"]


class MaskUpdater:
    """Base class: a prune-and-grow rule defined by its drop and grow scores.

    Subclasses override `drop_scores` and/or `grow_scores`, and set
    `needs_gradients` when `grow_scores` reads the gradient.
    """

    #: Whether `update` must be given the layer's gradient.
    needs_gradients = False

    def drop_scores(self, weight, mask, gradient, rng):
        """Scores of the weights; the active ones with the lowest scores are dropped.

        Defaults to the magnitude ``|weight · mask|``.
        """
        return np.abs(weight * mask)

    def grow_scores(self, weight, mask, gradient, rng):
        """Scores of the weights; the inactive ones with the highest scores are grown."""
        raise NotImplementedError

    def get_config(self):
        """The constructor arguments (none for the updaters here)."""
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def update(self, weight, mask, gradient, n_drop, n_grow, rng):
        """The new mask after dropping `n_drop` and growing `n_grow` weights.

        Args:
            weight: the layer's weight (NumPy array).
            mask: its current 0/1 mask, same shape.
            gradient: the gradient of the loss with respect to the weight, same
                shape, or `None` if the updater does not need it.
            n_drop: how many active weights to drop (capped at the number active).
            n_grow: how many inactive weights to grow (capped at the number
                left inactive after the drop).
            rng: a `numpy.random.Generator` for the random scores and ties.

        Returns:
            The new mask, a float array of the mask's dtype and shape.
        """
        return prune_and_grow(mask, self.drop_scores(weight, mask, gradient, rng),
                              lambda: self.grow_scores(weight, mask, gradient, rng),
                              n_drop, n_grow, rng)


@register
class RigLUpdater(MaskUpdater):
    """RigL (Evci et al. 2020): drop by magnitude, grow by the largest gradient magnitude."""

    needs_gradients = True

    def grow_scores(self, weight, mask, gradient, rng):
        if gradient is None:
            raise ValueError("RigLUpdater.grow_scores needs the gradient of the weight. Received: None")
        return np.abs(gradient)


@register
class SETUpdater(MaskUpdater):
    """SET (Mocanu et al. 2018): drop by magnitude, grow at random."""

    def grow_scores(self, weight, mask, gradient, rng):
        return rng.random(mask.shape)
