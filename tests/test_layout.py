"""The package's shape: imports only go down, the top level is lazy, registered names outlive moves."""
import importlib
import subprocess
import sys
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import imports  # noqa: E402  (tools/imports.py)

sys.path.pop(0)


def test_import_graph_has_no_cycles_no_upward_and_no_private_imports():
    result = imports.analyse()
    assert result["cycles"] == []
    assert result["upward"] == []
    assert result["private"] == []
    assert result["deferred_outside_cli"] == []
    assert {p.split(".")[1] for p in result["packages"]} == {
        "core", "weighting", "sparsity", "export", "data", "cli", "keras3"}
    # The Keras 3 path takes only the argument checks, the outputs-by-task rule, the loss-balance
    # rules, the shared maths (task weights, pruning, densities) and the LiteRT runner from the rest.
    assert {t for name, targets in result["edges"].items() if name.startswith("keras_minmax_mtl.keras3")
            for t in targets if not t.startswith("keras_minmax_mtl.keras3")} == {
        "keras_minmax_mtl.core.checks", "keras_minmax_mtl.core.outputs",
        "keras_minmax_mtl.core.loss_balance", "keras_minmax_mtl.weighting.maths",
        "keras_minmax_mtl.sparsity.maths", "keras_minmax_mtl.sparsity.densities",
        "keras_minmax_mtl.export.runtimes"}


def test_the_checker_keeps_keras3_to_its_modules_and_out_of_the_other_parts(tmp_path, monkeypatch):
    pkg = tmp_path / "keras_minmax_mtl"
    for sub in ("core", "weighting", "keras3"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "checks.py").write_text("")
    (pkg / "core" / "backend.py").write_text("")
    (pkg / "weighting" / "maths.py").write_text("from keras_minmax_mtl.core import checks\n")
    (pkg / "weighting" / "ascent.py").write_text("from keras_minmax_mtl.core import backend\n")
    (pkg / "keras3" / "ok.py").write_text(
        "from keras_minmax_mtl.core import checks\nfrom keras_minmax_mtl.weighting import maths\n")
    (pkg / "keras3" / "bad.py").write_text("from keras_minmax_mtl.weighting import ascent\n")
    (pkg / "core" / "up.py").write_text("from keras_minmax_mtl.keras3 import ok\n")
    monkeypatch.setattr(imports, "ROOT", pkg)
    assert sorted(imports.analyse()["upward"]) == [
        "keras_minmax_mtl.core.up:1 imports keras_minmax_mtl.keras3.ok",
        "keras_minmax_mtl.keras3.bad:1 imports keras_minmax_mtl.weighting.ascent"]


def test_the_checker_sees_a_cycle_an_upward_import_and_a_private_name(tmp_path, monkeypatch):
    pkg = tmp_path / "keras_minmax_mtl"
    for sub in ("core", "sparsity"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text(
        "from keras_minmax_mtl.core import b\n"
        "def f():\n    from keras_minmax_mtl.sparsity.c import _hidden\n")
    (pkg / "core" / "b.py").write_text("from keras_minmax_mtl.core import a\n")
    (pkg / "sparsity" / "c.py").write_text("_hidden = 1\n")
    monkeypatch.setattr(imports, "ROOT", pkg)
    result = imports.analyse()
    assert result["cycles"] == [["keras_minmax_mtl.core.a", "keras_minmax_mtl.core.b"]]
    assert result["upward"] == ["keras_minmax_mtl.core.a:3 imports keras_minmax_mtl.sparsity.c"]
    assert result["private"] == ["keras_minmax_mtl.core.a:3 uses keras_minmax_mtl.sparsity.c._hidden"]
    assert result["deferred_outside_cli"] == [
        "keras_minmax_mtl.core.a:3 imports keras_minmax_mtl.sparsity.c inside a function"]
    assert imports.main(["--check"]) == 1


def _modules_after(code):
    """The heavy modules loaded by `code` in a fresh interpreter."""
    probe = (f"import sys\n{code}\n"
             "heavy = ['tensorflow', 'tf_keras', 'tensorflow_model_optimization',\n"
             "         'ai_edge_litert', 'tflite_micro', 'matplotlib', 'sklearn',\n"
             "         'keras_minmax_mtl.keras3']\n"
             "print(' '.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_top_level_import_is_light_and_the_core_pulls_no_tfmot_or_tflite():
    assert _modules_after("import keras_minmax_mtl") == set()
    core = _modules_after("import keras_minmax_mtl as k\nk.MinMaxMultiTask\nk.UncertaintyWeighting\n"
                          "k.DynamicWeightAverage\nk.TaskWeightHistory")
    assert {"tensorflow", "tf_keras"} <= core
    assert not core & {"tensorflow_model_optimization", "ai_edge_litert", "tflite_micro",
                       "keras_minmax_mtl.keras3"}


def test_every_public_name_resolves_from_its_module():
    import keras_minmax_mtl as kmm

    assert kmm.__all__ == sorted(kmm.__all__)
    for name in kmm.__all__:
        value = getattr(kmm, name)
        module = importlib.import_module(f"keras_minmax_mtl.{kmm._SOURCES[name]}")
        assert getattr(module, name) is value
        assert name in module.__all__, (name, module.__name__)
    assert set(kmm.__all__) <= set(dir(kmm))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        kmm.nothing  # noqa: B018


def test_registered_names_do_not_depend_on_module_paths():
    from keras_minmax_mtl.core.serialization import custom_objects
    from keras_minmax_mtl.sparsity import scope  # noqa: F401  (registers the sparsity classes)

    objects = custom_objects()
    assert objects
    for name, obj in objects.items():
        assert name == f"keras_minmax_mtl>{obj.__name__}", name


def test_docs_layout_is_fresh():
    assert (ROOT / "docs" / "layout.md").read_text() == imports.layout(), (
        "docs/layout.md is stale: run `python tools/imports.py --layout > docs/layout.md`")


def test_pyproject_installs_every_subpackage():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = sorted(".".join(p.parent.relative_to(ROOT).parts)
                   for top in ("keras_minmax_mtl", "tf_keras_minmax_mtl")
                   for p in (ROOT / top).rglob("__init__.py"))
    assert sorted(config["tool"]["setuptools"]["packages"]) == found
    assert "jax==0.10.2" in config["project"]["optional-dependencies"]["keras3"]
