"""`runtimes.micro_min_arena_bytes`' search: the smallest arena that runs, from any starting report.

TFLite Micro is replaced by a rule (an arena runs iff it holds `need` bytes)
and a reported allocation `used`, so the search's answer and its number of
probes are checked exactly, without loading a model.
"""
import numpy as np
import pytest

from keras_minmax_mtl.export import runtimes

FILE = b"\x00" * 1000  # a "file" of 1000 bytes: the default arena (the ceiling) is 10 000 bytes


class _Interpreter:
    def __init__(self, used):
        self.used = used

    def get_input_details(self, index):
        return {"shape": (1, 2), "dtype": np.float32}

    def set_input(self, value, index):
        pass

    def invoke(self):
        pass


@pytest.mark.parametrize("need, used", [
    (2512, 2176),   # the report below the need (TFLite Micro's alignment): search upwards
    (2512, 2512),   # the report exact
    (2512, 2600),   # the report above the need: bisection below it
    (2512, 1),      # a useless report: bisection from 0
    (16, 16),       # the smallest arena
    (9984, 9000),   # near the ceiling
    (10000, 2000),  # the ceiling itself
])
def test_the_search_finds_the_smallest_multiple_of_step_that_runs(monkeypatch, need, used):
    probes = []

    def runs(content, arena, inputs):
        probes.append(arena)
        return arena >= need

    monkeypatch.setattr(runtimes, "_read", lambda model: model)
    monkeypatch.setattr(runtimes, "micro_interpreter", lambda content, **kw: _Interpreter(used))
    monkeypatch.setattr(runtimes, "model_details", lambda content: {"inputs": [0]})
    monkeypatch.setattr(runtimes, "micro_arena_bytes", lambda interpreter: interpreter.used)
    monkeypatch.setattr(runtimes, "_micro_runs", runs)
    assert runtimes.micro_min_arena_bytes(FILE) == -(-need // 16) * 16
    assert probes[0] == 10000  # the default arena first: a model that cannot run is refused
    # A bisection from 0 over 625 steps takes 10 probes + 1; a report near the need saves half of
    # them, one far below it costs a few more (the doubling steps).
    assert len(probes) <= (8 if 0 <= need - used <= 512 and used > 16 else 15)


def test_a_model_that_does_not_run_with_the_default_arena_is_refused(monkeypatch):
    monkeypatch.setattr(runtimes, "_read", lambda model: model)
    monkeypatch.setattr(runtimes, "micro_interpreter", lambda content, **kw: _Interpreter(100))
    monkeypatch.setattr(runtimes, "model_details", lambda content: {"inputs": [0]})
    monkeypatch.setattr(runtimes, "_micro_runs", lambda content, arena, inputs: False)
    with pytest.raises(runtimes.MicroOpError, match="even with the default arena"):
        runtimes.micro_min_arena_bytes(FILE)
