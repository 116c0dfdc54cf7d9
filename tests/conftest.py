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
"""
import atexit
import logging
import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: The exit status of the finished session; `None` until pytest_unconfigure.
_exit_status = None
_session = None


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
