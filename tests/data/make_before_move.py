"""Writes the models saved before the layout move (issue 14) with commit cbed9ad's package."""
import numpy as np
import tf_keras as keras
import keras_minmax_mtl as kmm
from keras_minmax_mtl.reweighted import prune_reweighted_l1

keras.utils.set_random_seed(0)
inp = keras.Input((4,), name="x")
h = keras.layers.Dense(6, activation="relu", name="trunk")(inp)
out = [keras.layers.Dense(3, name="a")(h), keras.layers.Dense(1, name="b")(h)]
base = keras.Model(inp, out)
x = np.random.RandomState(0).normal(size=(8, 4)).astype("float32")
y = {"a": np.arange(8) % 3, "b": np.linspace(0, 1, 8).astype("float32")}
m = kmm.MinMaxMultiTask(base, step_size=0.1, gamma=2.0)
m.compile(optimizer="sgd", loss={"a": "sparse_categorical_crossentropy", "b": "mse"})
m.fit(x, y, epochs=1, batch_size=4, verbose=0)
m.save("/work/main/tests/data/minmax_before_move.keras")
wrapped, callbacks = prune_reweighted_l1(base, 0.5, dense_steps=1, reweighted_steps=1, rho=1e-4)
p = kmm.MultiTaskModel(wrapped, weighting=kmm.DynamicWeightAverage())
p.compile(optimizer="sgd", loss={"a": "sparse_categorical_crossentropy", "b": "mse"})
p.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=callbacks)
p.save("/work/main/tests/data/reweighted_before_move.keras")
np.savez("/work/main/tests/data/before_move_outputs.npz", x=x,
         minmax_a=m.predict(x, verbose=0)["a"], minmax_b=m.predict(x, verbose=0)["b"],
         minmax_w=m.task_weights.numpy(),
         pruned_a=p.predict(x, verbose=0)["a"], pruned_b=p.predict(x, verbose=0)["b"])
print("ok", m.task_weights.numpy())
