"""Settings of the test session.

A fast exit: once pytest has finished (summary printed, exit status known,
every `atexit` handler registered after this module run: pytest's temporary
folder clean-up, TensorFlow's, absl's, tfds', matplotlib's), the process ends
with `os._exit(status)` instead of letting the interpreter tear down, module by
module, the thousands of graphs, functions and models the suite built: that
teardown runs in TensorFlow's C++ destructors, holds no Python frame and took
over a minute after the summary of a whole suite. Nothing of the tests' runs
is lost: their files are written and closed, the streams are flushed first.
The same holds in each pytest-xdist worker (whose controller would otherwise
wait up to 10 s for it, then kill it). `KMM_TESTS_SLOW_EXIT=1` keeps the
ordinary exit (to look at the teardown itself).

The order of the test files (`pytest_collection_modifyitems`): under
`--dist loadfile` each file runs whole on one worker, handed out in the
order of the collection (`--no-loadscope-reorder` in pyproject.toml: xdist's
own reordering puts the files with the fewest tests last, and those were the
slowest, a single training or export each, so one worker ran them while the
other sat idle). The slowest files start first (`SLOW_FILES`), the others
follow with the most tests first, so the files left at the end are short.
"""
import atexit
import collections
import logging
import os
import sys

import pytest

#: The slowest test files, slowest first (by the sum of their tests' `--durations=0` in a run
#: of the suite; re-rank them when a file grows). Files not listed run after these.
SLOW_FILES = (
    "tests/test_conformance.py",
    "tests/test_docs.py",
    "tests/test_distribute.py",
    "tests/test_nested.py",
    "tests/test_export.py",
    "tests/test_dst.py",
    "tests/test_keras3_pruning.py",
    "tests/test_reweighted.py",
    "tests/test_cli.py",
    "tests/test_hybrid.py",
    "tests/test_structured.py",
    "tests/test_keras3.py",
    "tests/test_export_outputs.py",
    "tests/test_loading.py",
    "tests/test_multitask.py",
    "tests/test_compare.py",
    "tests/test_task_aware.py",
    "tests/test_dataset_examples.py",
    "tests/test_examples.py",
    "tests/test_structured_benchmark.py",
    "tests/test_serialization.py",
    "tests/test_kill.py",
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: The exit status of the finished session; `None` until pytest_unconfigure.
_exit_status = None
_session = None


def _file_order(items):
    """`{test file: rank}`: `SLOW_FILES` in their order, then the other files, most tests first."""
    counts = collections.Counter(item.nodeid.split("::")[0] for item in items)
    others = sorted((f for f in counts if f not in SLOW_FILES), key=lambda f: -counts[f])
    return {f: rank for rank, f in enumerate([*SLOW_FILES, *others])}


def pytest_collection_modifyitems(config, items):
    """Runs the test files in `_file_order`; the tests of a file keep their order."""
    missing = [f for f in SLOW_FILES if not (config.rootpath / f).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py: SLOW_FILES names files that do not exist: "
                                f"{missing}")
    rank = _file_order(items)
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


def pytest_sessionstart(session):
    global _session
    _session = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    global _exit_status
    if _session is not None and not os.environ.get("KMM_TESTS_SLOW_EXIT"):
        _exit_status = int(_session.exitstatus)


def _exit_without_teardown():
    """The last `atexit` handler to run (registered first): ends the process at once."""
    if _exit_status is None:  # pytest did not finish normally: exit the ordinary way
        return
    logging.shutdown()  # registered before this handler, so it would run after it
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(_exit_status)


atexit.register(_exit_without_teardown)
