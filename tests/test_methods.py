"""The registry of compression methods: `kmm train`'s flags, help and checks, and the benchmarks, from one place."""
import subprocess
import sys

import pytest

from keras_minmax_mtl.cli import main as cli
from keras_minmax_mtl.core import arguments
from keras_minmax_mtl.sparsity import methods
from keras_minmax_mtl.sparsity.methods import METHODS, Option, SparsityMethod, get_method
from tests.helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import _runs  # noqa: E402


def _train_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_every_registered_method_has_its_flags_and_summary_in_train_help(capsys):
    assert list(METHODS) == ["none", "reweighted_l1", "dst", "task_aware", "hybrid"]
    text = _train_help(capsys)
    assert "--pruning {none,reweighted_l1,dst,task_aware,hybrid}" in text
    for name, method in METHODS.items():
        assert f"{name}: {' '.join(method.summary.split())}" in text
        if method.options:
            assert method.group_title() in text
        for option in method.options:
            assert option.flag in text, (name, option.flag)
    # Every option is a flag of the parser with the option's default.
    args = cli.build_parser().parse_args(["train"])
    for method in METHODS.values():
        for option in method.options:
            assert getattr(args, option.dest) == option.default


def test_an_unknown_method_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--pruning", "magnitude"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "kmm: error: argument --pruning: invalid choice: 'magnitude' (choose from 'none', "
        "'reweighted_l1', 'dst', 'task_aware', 'hybrid')"]
    with pytest.raises(ValueError, match=r"Argument `name` must be one of \['none', "
                                         r"'reweighted_l1', 'dst', 'task_aware', 'hybrid'\]. "
                                         r"Received: name='magnitude'"):
        get_method("magnitude")


def test_options_with_one_exclusive_key_are_mutually_exclusive_flags(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--pruning", "task_aware", "--groups", "2",
                  "--similarity-threshold", "0.3"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "kmm: error: argument --similarity-threshold: not allowed with argument --groups"]


class _Toy(SparsityMethod):
    """A method for the test: no wrapping; one option with a rule and a library name."""

    name = "toy_test"
    summary = "a test method"
    library_flags = {"seed": "--seed"}
    options = (Option("--toy-strength", arguments.positive_float, 1.0, "how strong",
                      library=("strength",)),)

    def check_options(self):
        if self.toy_strength > 10:
            self.refuse("toy_strength", "must be <= 10")


@pytest.fixture
def toy():
    methods.register_method(_Toy)
    try:
        yield _Toy
    finally:
        del METHODS[_Toy.name]


def test_a_method_registered_in_one_class_is_a_kmm_train_choice_with_its_flags(toy, capsys):
    text = _train_help(capsys)
    assert "toy_test: a test method" in text and "toy_test (--pruning toy_test)" in text
    assert "--toy-strength TOY_STRENGTH how strong" in text
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--pruning", "toy_test", "--toy-strength", "2",
                              "--sparsity", "0.5", "--epochs", "3"])
    method = cli.check_train_arguments(parser, args)
    assert isinstance(method, _Toy) and method.toy_strength == 2.0 and method.epochs == 3
    assert str(args.out) == "runs/multi_digits-minmax-toy_test-0.5-e3-s0"
    # Its flag with another method, and its rule, are refused in one line, exit 2.
    for argv, line in [
        (["--toy-strength", "2"], "kmm: error: argument --toy-strength: only used with --pruning "
                                  "toy_test; this run has --pruning none, so it would be ignored. "
                                  "Received --toy-strength 2.0"),
        (["--pruning", "toy_test", "--toy-strength", "11"],
         "kmm: error: argument --toy-strength: must be <= 10. Received --toy-strength 11.0"),
        (["--pruning", "toy_test", "--toy-strength", "0"],
         "kmm: error: argument --toy-strength: must be a number > 0, received 0"),
    ]:
        with pytest.raises(SystemExit) as info:
            cli.main(["train", *argv])
        assert info.value.code == 2 and capsys.readouterr().err.splitlines() == [line]
    # --sparsity belongs to it too; library errors are told in its flags.
    assert cli.build_parser().flag_owners["sparsity"][3] == (
        "reweighted_l1", "dst", "task_aware", "hybrid", "toy_test")
    assert cli.flag_message("Argument `strength` must be finite. Received: strength=nan",
                            "toy_test") == "argument --toy-strength: must be finite. " \
                                           "Received: --toy-strength=nan"
    # The benchmarks run it under its own name.
    assert "toy_test" in _runs.compressions()
    assert isinstance(_runs.compression_method("toy_test", 0.5, 0, 4, 2), _Toy)


def test_register_method_refuses_a_taken_name_or_flag():
    with pytest.raises(ValueError, match=r"Method name 'dst' is taken by DynamicSparse"):
        methods.register_method(type("Again", (SparsityMethod,), {"name": "dst"}))
    clash = type("Clash", (SparsityMethod,), {"name": "clash", "options": (
        Option("--rho", float, 1.0), Option("--sparsity", float, 0.5))})
    with pytest.raises(ValueError, match=r"flags \['--rho', '--sparsity'\] that \['every method', "
                                         r"'reweighted_l1'\] already use"):
        methods.register_method(clash)
    with pytest.raises(ValueError, match=r"needs a `name`"):
        methods.register_method(type("Nameless", (SparsityMethod,), {}))
    assert "clash" not in METHODS
    with pytest.raises(TypeError, match=r"ReweightedL1 takes the options .*Received unknown "
                                        r"options: \['dst_method'\]"):
        get_method("reweighted_l1")(dst_method="set")


def test_the_benchmark_settings_are_the_command_line_defaults_scaled_to_the_run():
    # The values benchmarks/_runs.py used before the registry (REWEIGHTED, FILTER_L1, DST,
    # TASK_AWARE, the hybrid settings), for a run of 20 epochs of 8 steps.
    def settings(compression, epochs=20, options=None):
        method = _runs.compression_method(compression, 0.5, 3, 8, epochs, options)
        return type(method).__name__, method.epochs, method.settings

    assert settings("dense") == ("Dense", 20, {})
    assert settings("reweighted_l1") == ("ReweightedL1", 20, {
        "dense_epochs": 10, "reweighted_epochs": 5, "retrain_epochs": 5,
        "sparsity_type": "unstructured", "group_score": "norm", "rho": 1e-4, "epsilon": 1e-6,
        "allocation": "global"})
    assert settings("filter_l1", 7)[2] == {
        "dense_epochs": 3, "reweighted_epochs": 1, "retrain_epochs": 3, "sparsity_type": "filter",
        "group_score": "norm", "rho": 1e-3, "epsilon": 1e-6, "allocation": "uniform"}
    assert settings("dst", 1) == ("DynamicSparse", 1, {
        "dst_method": "rigl", "density": "erk", "dst_update_every": 6, "dst_end_step": None,
        "drop_fraction": 0.3, "grow_ratio": None})
    assert settings("dst")[2]["dst_update_every"] == 100
    assert settings("task_aware", 5) == ("TaskAware", 3, {
        "warmup_epochs": 2, "similarity_coefficient": 0.5, "groups": None,
        "similarity_threshold": 0.0, "allocate_every": 6, "smoothing": 0.5,
        "initial_allocation": "global", "measure_samples": 256})
    assert settings("hybrid", 6, {"task_share": 0.1}) == ("Hybrid", 6, {
        "task_share": 0.1, "hybrid_allocation": "global", "hybrid_dense_epochs": None,
        "hybrid_prune_epochs": 0})
    assert _runs.COMPRESSIONS == ("dense", "reweighted_l1", "dst", "filter_l1", "task_aware",
                                  "hybrid")
    with pytest.raises(ValueError, match=r"`epochs` must be >= 3 with reweighted_l1"):
        settings("filter_l1", 2)
    with pytest.raises(ValueError, match=r"`compression` must be one of"):
        settings("magnitude")


def test_stages_add_up_to_the_epochs_of_fit():
    assert get_method("reweighted_l1")(retrain_epochs=2).stages() == [
        ("dense", 10), ("reweighted", 5), ("retrain", 2)]
    assert get_method("hybrid")(epochs=8, hybrid_prune_epochs=2).stages() == [
        ("dense", 4), ("prune", 2), ("masked", 2)]
    assert get_method("hybrid")(epochs=5).stages() == [("dense", 2), ("masked", 3)]
    assert get_method("task_aware")().stages() == [("grouped", 10)]
    assert get_method("dst")(epochs=3).stages() == get_method("none")(epochs=3).stages() == [
        ("train", 3)]
    for name, method in METHODS.items():
        instance = method()
        assert sum(epochs for _, epochs in instance.stages()) == instance.epochs, name


def test_the_registry_imports_no_tensorflow():
    code = "import keras_minmax_mtl.sparsity.methods, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
