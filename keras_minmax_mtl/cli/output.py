"""What `kmm` prints besides its results: TensorFlow's logs (hidden unless `-v`) and the `-v` flag.

By default a `kmm` command prints no TensorFlow, absl or TFLite-converter
log line: `quiet_tensorflow` sets `TF_CPP_MIN_LOG_LEVEL=3` (unless the user
set it) before TensorFlow is imported, `import_tensorflow` imports it with
file descriptors 1 and 2 captured (its start-up lines, ``Could not find cuda drivers ...``,
come from C++ before any level applies) and turns TensorFlow's and absl's
Python loggers down to errors; `export_tflite(verbose=False)` captures the
converter's output. A failure still shows its log: an import of TensorFlow
that fails prints what it captured, and so does a conversion that fails.

`-v`/`--verbose` shows all of it (before or after the command name:
``kmm -v export ...``, ``kmm export -v ...``; `kmm train`'s `--verbose`
also takes Keras' verbosity, see `add_train_verbose`).

Example:

>>> with quiet_tensorflow(show_logs=False):
...     check_arguments(args)           # no TensorFlow yet
...     import_tensorflow()             # now, without its start-up lines
...     run(args)
"""
import argparse
import contextlib
import logging
import os
import sys

__all__ = ["add_verbose_flag", "add_train_verbose", "show_logs", "quiet_tensorflow",
           "import_tensorflow"]

#: The Python loggers of TensorFlow and absl, set to errors when quiet.
_LOGGERS = ("tensorflow", "absl")

_VERBOSE_HELP = ("show TensorFlow's, absl's and the TFLite converter's logs (hidden by default)")


def add_verbose_flag(parser, top_level=False):
    """Adds `-v`/`--verbose` (show the logs) to `parser`, the `kmm` parser or a subcommand's.

    The subcommands' flag has no default (`argparse.SUPPRESS`), so that a
    `-v` given before the command is not reset by the subcommand's parser.
    """
    parser.add_argument("-v", "--verbose", dest="show_logs", action="store_true",
                        default=False if top_level else argparse.SUPPRESS, help=_VERBOSE_HELP)


def add_train_verbose(train_parser):
    """Adds `kmm train`'s `-v`/`--verbose [LEVEL]`.

    Without it: one compact line per epoch and no logs. `-v` (level 1) or
    `--verbose 2`: Keras' own progress display (1 a progress bar, 2 one line
    per epoch with every metric) and TensorFlow's logs; `--verbose 0`: silent.
    `args.verbose` is `None` when not given (`main` resolves it).
    """
    train_parser.add_argument(
        "-v", "--verbose", type=int, default=None, choices=[0, 1, 2], nargs="?", const=1,
        metavar="LEVEL",
        help="without it: one compact line per epoch (loss, each task's accuracy, the task "
             "weights) and no TensorFlow logs; -v or --verbose 1: Keras' progress bar with "
             "every metric, and the logs; --verbose 2: Keras' one line per epoch, and the logs; "
             "--verbose 0: silent")


def show_logs(args):
    """Whether the command shows TensorFlow's logs: `-v` anywhere, or `kmm train --verbose 1|2`."""
    if getattr(args, "show_logs", False):
        return True
    return getattr(args, "command", None) == "train" and bool(getattr(args, "verbose", None))


@contextlib.contextmanager
def quiet_tensorflow(show_logs=False):
    """Runs a `kmm` command with TensorFlow's logs hidden (or shown with `show_logs`).

    Sets `TF_CPP_MIN_LOG_LEVEL=3` unless the environment has a level; the
    command calls `import_tensorflow` once its arguments are valid. The
    environment and the levels of the `tensorflow` and `absl` Python loggers
    are restored when the block ends.
    """
    from keras_minmax_mtl.core.logs import TF_LOG_ENVIRONMENT

    saved_environment = {name: os.environ.get(name) for name in TF_LOG_ENVIRONMENT}
    saved_levels = [(logger, logger.level) for logger in map(logging.getLogger, _LOGGERS)]
    if not show_logs:
        for name, value in TF_LOG_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for logger, level in saved_levels:
            logger.setLevel(level)
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def import_tensorflow(show_logs=False):
    """Imports TensorFlow, its C++ start-up lines captured unless `show_logs`; quiets its loggers.

    Call it once the arguments are valid, inside `quiet_tensorflow`. If the
    import fails, what it printed is shown (`core.logs.captured_output`).
    """
    from keras_minmax_mtl.core.logs import captured_output

    with captured_output(enabled=not show_logs and "tensorflow" not in sys.modules):
        import tensorflow  # noqa: F401
    if not show_logs:
        for logger in map(logging.getLogger, _LOGGERS):
            logger.setLevel(logging.ERROR)
