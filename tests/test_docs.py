"""The documentation is executed: every shell and Python block of README.md and docs/*.md runs.

How a page's fenced blocks are treated (the markers are HTML comments in the
page, so its source shows what the test does with each block):

- Every fence names its language. ```` ```python ```` blocks run in page
  order in one namespace per page; ```` ```bash ```` blocks run their
  commands (a line ending in ``\\`` continues, ``#`` starts a comment,
  ``&&`` separates commands): ``kmm ...`` runs the command line in this
  process (`keras_minmax_mtl.cli.main.main`) and must exit 0. Every page
  runs in its own empty folder, shared by its blocks, so a later block uses
  the run an earlier one wrote; a ``kmm train`` command line identical to
  one of an earlier page (the quick start, in README.md and
  docs/quickstart.md) copies that run's folder instead of training again. ```` ```text ```` and ```` ```json ```` blocks
  are not code; a text block that holds a ``kmm`` or ``python`` command must
  be marked ``not run`` or ``synopsis``.
- HTML comments right above a fence change what runs, visibly in the page source:
  - ``<!-- smoke: OLD => NEW -->`` replaces the text ``OLD`` of the block by
    ``NEW`` before it runs (smaller sizes: ``--epochs 20 => --epochs 1``);
    ``OLD`` must occur in the block, so a stale rule fails;
  - ``<!-- skip: PREFIX (why) -->``: the block's commands that start with
    ``PREFIX`` are not run (installing, running this suite);
  - ``<!-- not run: why -->``: the block is not run (real datasets, the Edge
    TPU compiler, benchmarks of minutes), counted and listed with its reason;
  - ``<!-- synopsis -->``: a usage synopsis of ``kmm SUBCOMMAND ...`` lines;
    every ``--flag`` must be an option of that subcommand, in ``[...]`` when
    it is optional (unless shown with one chosen value: ``--pruning
    task_aware``) and outside them when it is required, and ``a|b|c`` after
    it must be exactly its choices.
"""
import contextlib
import importlib.util
import io
import os
import pathlib
import re
import shlex
import shutil
import textwrap

import pytest

from tests.helpers import REPO_ROOT

PAGES = ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]
CODE = {"python", "bash"}
NOT_CODE = {"text", "json"}
_FENCE = re.compile(r"^([ \t]*)```(\S*)\n(.*?)^\1```[ \t]*$", re.S | re.M)
_COMMENT = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")


class Block:
    """One fenced block of a page, with the markers written above it."""

    def __init__(self, page, line, language, text, markers):
        self.page, self.line, self.language, self.text = page, line, language, text
        self.markers = markers  # [(kind, value)]

    def __repr__(self):
        return f"{self.page}:{self.line} ({self.language or 'no language'})"

    def marked(self, kind):
        return [value for k, value in self.markers if k == kind]

    @property
    def not_run(self):
        reasons = self.marked("not run")
        return reasons[0] if reasons else None

    def smoke_text(self):
        """The block's text with its `smoke` replacements applied; a stale one fails."""
        text = self.text
        for rule in self.marked("smoke"):
            old, sep, new = rule.partition(" => ")
            assert sep, f"{self}: a smoke rule is `OLD => NEW`. Received: {rule!r}"
            assert old in text, f"{self}: the smoke rule {rule!r} matches nothing in the block"
            text = text.replace(old, new)
        return text


def _dict_outputs_prints(printed):
    """The README's dict-output example (run as pasted: it has no smoke rule)."""
    assert printed.startswith("['digit', 'size'] [")
    assert "'digit_accuracy'" in printed and "'size_mae'" in printed


#: `<!-- readme-example: LABEL -->` blocks and the check of what they print.
PRINTS = {"dict outputs": _dict_outputs_prints}


def blocks(page, source=None):
    """The fenced blocks of `page` (a path relative to the repository, or `source`), in order."""
    source = (REPO_ROOT / page).read_text() if source is None else source
    found = []
    for match in _FENCE.finditer(source):
        line = source.count("\n", 0, match.start()) + 1
        markers = []
        above = source[:match.start()].split("\n")[:-1]
        while above and _COMMENT.match(above[-1]):
            body = _COMMENT.match(above.pop()).group(1)
            kind, sep, value = body.partition(":")
            markers.insert(0, (kind.strip(), value.strip()) if sep else (body, ""))
        found.append(Block(page, line, match.group(2), textwrap.dedent(match.group(3)), markers))
    fences = len(re.findall(r"^[ \t]*```", source, flags=re.M))
    assert fences == 2 * len(found), f"{page}: a fence that does not pair up ({fences} fences)"
    return found


def commands(text):
    """The commands of a shell block: continuations joined, comments dropped, split at `&&`."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command = []
        for word in words + ["&&"]:
            if word == "&&":
                if command:
                    found.append(command)
                command = []
            else:
                command.append(word)
    return found


#: `kmm train` command lines run by an earlier page -> the folder they wrote.
_TRAINED = {}


def _reuse_training(command):
    """Copies the run of the same `kmm train` command line from an earlier page, if any.

    The README and docs/quickstart.md share the quick start: it trains once.
    """
    earlier = _TRAINED.get(tuple(command))
    if earlier is None or not earlier.is_dir():
        return False
    out = pathlib.Path.cwd() / command[command.index("--out") + 1]
    assert not out.exists(), f"`{' '.join(command)}`: {out} exists already"
    shutil.copytree(earlier, out)
    return True


def run_shell(block, ran):
    """Runs the `kmm` commands of a bash block in the current folder; skips marked prefixes."""
    from keras_minmax_mtl.cli.main import main

    skips = [re.sub(r"\s*\(.*\)\s*$", "", s) for s in block.marked("skip")]
    used = set()
    for command in commands(block.smoke_text()):
        line = " ".join(command)
        prefix = next((s for s in skips if line.startswith(s)), None)
        if prefix is not None:
            used.add(prefix)
            ran.append(("skipped", line))
            continue
        assert command[0] == "kmm", (
            f"{block}: `{line}` is not a kmm command; mark the block `not run` or the "
            "command `skip` with the reason")
        if _reuse_training(command):
            ran.append(("reused", line))
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                status = main(command[1:])
            except SystemExit as error:  # argparse's and kmm's usage errors
                status = error.code
        assert status == 0, f"{block}: `{line}` exited {status}:\n{out.getvalue()[-2000:]}"
        if command[1] == "train" and "--out" in command:
            _TRAINED[tuple(command)] = pathlib.Path.cwd() / command[command.index("--out") + 1]
        ran.append(("ran", line))
    assert used == set(skips), f"{block}: skip rules matching no command: {set(skips) - used}"


def _subcommand_actions(subcommand):
    """`{option string: argparse action}` of `kmm SUBCOMMAND`."""
    from keras_minmax_mtl.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and subcommand in a.choices)
    return {o: action for action in sub.choices[subcommand]._actions for o in action.option_strings}


def check_synopsis(block):
    """Each `--flag` of a `kmm SUB ...` synopsis is an option of SUB, in brackets exactly when
    it is optional, and an `a|b|c` after a flag with choices lists exactly its choices."""
    sections = re.split(r"^(?=kmm \w)", block.text, flags=re.M)
    checked = 0
    for section in filter(str.strip, sections):
        subcommand = section.split()[1]
        actions = _subcommand_actions(subcommand)
        for match in re.finditer(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?:[ \t]+([^\s\[\]]+))?", section):
            flag, value = match.groups()
            value = None if value is None or value.startswith("-") else value
            alternatives = value if value and "|" in value else None
            assert flag in actions, f"{block}: `kmm {subcommand}` has no option {flag}"
            action = actions[flag]
            before = section[:match.start()]
            optional = before.count("[") > before.count("]")
            chosen = not action.required and not optional and (
                action.nargs == 0 or (value and not alternatives and not value.isupper()))
            assert chosen or optional == (not action.required), (
                f"{block}: {flag} of `kmm {subcommand}` is "
                f"{'required' if action.required else 'optional'}: "
                f"{'drop' if action.required else 'put it in'} the brackets (or show one value)")
            if alternatives and action.choices:
                assert set(alternatives.split("|")) == {str(c) for c in action.choices}, (
                    f"{block}: {flag} of `kmm {subcommand}` takes {sorted(map(str, action.choices))}"
                    f"; the synopsis says {alternatives}")
            checked += 1
    assert checked, f"{block}: a synopsis without options"


def _classify(block):
    """`"run"`, `"not run"`, `"synopsis"` or `"text"`; fails on a block without a rule."""
    assert block.language, f"{block}: every fence names its language (python, bash, text, json)"
    assert block.language in CODE | NOT_CODE, f"{block}: unknown language {block.language!r}"
    if block.not_run is not None:
        assert block.not_run, f"{block}: `not run` needs its reason"
        return "not run"
    if block.marked("synopsis"):
        return "synopsis"
    if block.language in NOT_CODE:
        commands_in_text = [l for l in block.text.splitlines()
                            if re.match(r"\s*(\$ )?(\w+=\S+ )*(kmm|python3?|pip) ", l)]
        assert not commands_in_text, (
            f"{block}: a {block.language} block holds commands {commands_in_text[:2]}: make it a "
            "bash block, or mark it `not run` (with the reason) or `synopsis`")
        return "text"
    return "run"


def test_every_block_of_every_page_has_a_language_and_a_rule(capsys):
    counts = {"run": 0, "not run": 0, "synopsis": 0, "text": 0}
    reasons = []
    for page in PAGES:
        for block in blocks(page):
            kind = _classify(block)
            counts[kind] += 1
            if kind == "not run":
                reasons.append(f"  {block}: {block.not_run}")
    with capsys.disabled():
        print(f"\ndocs blocks: {counts['run']} run, {counts['synopsis']} synopses checked, "
              f"{counts['not run']} not run, {counts['text']} text/json; not run:")
        print("\n".join(reasons))
    assert counts["run"] >= 15


def run_page(page, source=None):
    """Runs the blocks of `page` in the current folder; returns `[(what, command or block)]`."""
    namespace = {"__name__": f"docs:{page}"}
    ran = []
    for block in blocks(page, source):
        kind = _classify(block)
        if kind == "synopsis":
            check_synopsis(block)
        elif kind == "run" and block.language == "python":
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(block.smoke_text(), f"{page}:{block.line}", "exec"), namespace)
            for label in block.marked("readme-example"):
                PRINTS[label](printed.getvalue())
            ran.append(("ran", f"python block at line {block.line}"))
        elif kind == "run":
            run_shell(block, ran)
        elif kind == "not run":
            ran.append(("not run", f"{block.language} block at line {block.line}"))
    return ran


@pytest.mark.parametrize("page", PAGES)
def test_the_blocks_of_a_page_run_as_written_smoke_sized(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ran = run_page(page)
    with capsys.disabled():
        print(f"\n{page}: " + "; ".join(f"{what} {line}" for what, line in ran))


BROKEN = {
    "no language": ("```\nkmm train\n```\n", "every fence names its language"),
    "unpaired fence": ("```bash\nkmm --help\n", "does not pair up"),
    "command in text": ("```text\nkmm train --epochs 1\n```\n", "holds commands"),
    "stale smoke rule": ("<!-- smoke: --epochs 20 => --epochs 1 -->\n```bash\nkmm train --epochs 2\n```\n",
                         "matches nothing"),
    "unmarked benchmark": ("```bash\npython benchmarks/compare.py\n```\n", "is not a kmm command"),
    "stale skip rule": ("<!-- skip: pip install (x) -->\n```bash\nkmm --help\n```\n",
                        "skip rules matching no command: {'pip install'}"),
    "bad flag value": ("```bash\nkmm train --epochs 0\n```\n", "exited 2"),
    "python error": ("```python\nundefined_name\n```\n", "undefined_name"),
    "synopsis choices": ("<!-- synopsis -->\n```text\nkmm train [--pruning none|dst]\n```\n",
                         "--pruning of `kmm train` takes"),
    "synopsis required": ("<!-- synopsis -->\n```text\nkmm export RUN [--target micro] --out DIR\n```\n",
                          "--out of `kmm export` is optional"),
    "synopsis unknown": ("<!-- synopsis -->\n```text\nkmm train [--epoch N]\n```\n", "no option --epoch"),
    "not run without a reason": ("<!-- not run: -->\n```bash\nkmm train\n```\n", "needs its reason"),
    # The deploy step docs/quickstart.md had (kmm export writes deploy/model_<target>.tflite).
    "missing file": ("```bash\nkmm inspect deploy/model.tflite\n```\n",
                     "argument FILE.tflite: TFLite file 'deploy/model.tflite' does not exist."),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_page_with_a_broken_or_unmarked_block_fails(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source, message = BROKEN[case]
    with pytest.raises((AssertionError, NameError), match=re.escape(message)):
        run_page(f"{case}.md", source)


def test_not_run_blocks_are_not_run_and_skipped_commands_are_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = ("<!-- not run: needs the CIFAR-100 copy -->\n```python\nraise SystemExit(1)\n```\n"
              "<!-- skip: python3 -m pip install (not here) -->\n"
              "```bash\npython3 -m pip install . && python3 -m pip install x\n```\n"
              "```python\nvalue = 6 * 7\n```\n```python\nassert value == 42\n```\n")
    assert run_page("page.md", source) == [
        ("not run", "python block at line 2"), ("skipped", "python3 -m pip install ."),
        ("skipped", "python3 -m pip install x"), ("ran", "python block at line 9"),
        ("ran", "python block at line 12")]


def test_api_reference_lists_every_public_name_and_is_up_to_date():
    spec = importlib.util.spec_from_file_location("make_api", REPO_ROOT / "docs" / "make_api.py")
    make_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_api)
    text, undocumented = make_api.render()
    assert undocumented == []
    assert (REPO_ROOT / "docs" / "api.md").read_text() == text, "run: python docs/make_api.py"
