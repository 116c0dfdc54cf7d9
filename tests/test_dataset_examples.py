"""The CIFAR-100 and NYUv2 examples: their --smoke runs, and their message without data."""
import runpy

import numpy as np
import pytest

from tests.helpers import REPO_ROOT


def example(name):
    return runpy.run_path(str(REPO_ROOT / "examples" / name))


def test_cifar100_example_smoke_trains_compresses_and_exports(tmp_path):
    result = example("cifar100_mtl.py")["main"](["--smoke", "--out", str(tmp_path)])
    assert len(result["accuracy"]) == 3
    assert sum(result["task_weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "cifar100_mtl.tflite").stat().st_size == result["export"]["bytes"]
    assert result["export"]["keras_sparsity"]["overall"]["sparsity"] > 0.5


def test_nyuv2_example_smoke_trains_compresses_exports_and_scores(tmp_path):
    result = example("nyuv2.py")["main"](["--smoke", "--compression", "dst",
                                          "--out", str(tmp_path)])
    assert len(result["metrics"]) == 9 and np.isfinite(result["delta_m"])
    assert (tmp_path / "nyuv2.tflite").exists()
    assert result["export"]["keras_sparsity"]["overall"]["sparsity"] > 0.5


@pytest.mark.parametrize("name, expected", [
    ("cifar100_mtl.py", "No prepared TFDS `cifar100`"),
    ("nyuv2.py", "NYUv2 split folder"),
])
def test_examples_without_data_print_the_loaders_missing_data_error(name, expected, tmp_path,
                                                                   capsys):
    with pytest.raises(SystemExit) as info:
        example(name)["main"](["--data-dir", str(tmp_path / "missing")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and str(tmp_path / "missing") in err
