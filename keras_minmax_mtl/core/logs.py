"""TensorFlow's logs: what its C++ side writes to the process's stdout and stderr, captured.

TensorFlow, absl and the TFLite converter log from C++ straight to file
descriptors 1 and 2 (``WARNING: All log messages before absl::InitializeLog()
...``, ``I0000 ... cudart_stub.cc:31] Could not find cuda drivers ...``, the
converter's MLIR passes, ``fully_quantize: 0, inference_type: 6 ...``), so
neither Python's `sys.stdout` nor `logging` can silence them.
`captured_output` points the two descriptors at a temporary file for the
duration of a block, flushing the C library's buffered stdout before it
gives them back, and keeps the text; when the block raises, the text is
written to `sys.stderr` before the error goes on, so a real failure keeps
its log.

`TF_LOG_ENVIRONMENT` is what quiets the C++ logs that come later, set by the
command line (never on import: the library changes no environment).

Example:

>>> with captured_output() as captured:
...     content = converter.convert()
>>> captured.text.count("\\n")  # the converter's lines, not printed
23
"""
import contextlib
import ctypes
import os
import sys
import tempfile

__all__ = ["captured_output", "Captured", "TF_LOG_ENVIRONMENT"]

#: Environment of a quiet TensorFlow, set before it is imported: no C++ log
#: line below FATAL (`TF_CPP_MIN_LOG_LEVEL=3`).
TF_LOG_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3"}


class Captured:
    """What a `captured_output` block wrote to file descriptors 1 and 2 (`text`, set on exit)."""

    def __init__(self):
        self.text = ""


def _flush_c_stdio():
    """Flushes the C library's `stdout`/`stderr` buffers (printf output not yet written)."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask (not a POSIX libc)
        pass


@contextlib.contextmanager
def captured_output(enabled=True):
    """Sends what the process writes to file descriptors 1 and 2 to a temporary file while it runs.

    Args:
        enabled: `False` captures nothing (the block's output is shown).
            Defaults to `True`.

    Yields:
        A `Captured`, whose `text` holds the output once the block ends. If
        the block raises, the text is written to `sys.stderr` first, so the
        log of a failure is not lost. The descriptors are restored either way.
    """
    captured = Captured()
    if not enabled:
        yield captured
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    _flush_c_stdio()
    with tempfile.TemporaryFile() as sink:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        failed = False
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            yield captured
        except BaseException:
            failed = True
            raise
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            _flush_c_stdio()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")
            if failed and captured.text:
                sys.stderr.write(captured.text)
                sys.stderr.flush()
