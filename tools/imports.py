"""The package's import graph: cycles, imports that go up, private names across modules.

Reads the source (nothing is imported) and prints one line per module with
what it imports from the package, then the counts. With `--check` it exits 1
when the graph breaks a rule:

1. no cycles, counting imports inside functions too;
2. imports only go down the parts, as `ALLOWED` says (the core imports only
   the core, `weighting` only the core, ...), and a part named in `ONLY`
   imports from the other parts only the modules listed there (the Keras 3
   path, `keras3`, imports `core.checks`, `core.outputs`, `core.loss_balance`, the
   shared maths and the LiteRT runner,
   nothing that imports `tf_keras`; and no part imports `keras3`);
3. no private name (`_name`) of another module is imported or used;
4. inside the package, a module is imported inside a function only in `cli`,
   `loading`, `sparsity.methods` and `sparsity.budget` (they defer TensorFlow, tfmot and TFLite
   until needed).

    python tools/imports.py            # the graph and the counts
    python tools/imports.py --check    # exit 1 on a broken rule (tests/test_layout.py runs it)
    python tools/imports.py --layout > docs/layout.md   # one line per file (a test checks it is fresh)
"""
import argparse
import ast
import json
import pathlib
import sys

PACKAGE = "keras_minmax_mtl"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

#: The parts of the package and the parts each may import from (besides itself).
ALLOWED = {
    "core": set(),
    "weighting": {"core"},
    "sparsity": {"core"},
    "export": {"core", "sparsity"},
    "data": {"core"},
    "loading": {"core", "weighting", "sparsity", "export", "data"},  # registers every class
    "cli": {"core", "weighting", "sparsity", "export", "data", "loading"},
    "": {"core", "weighting", "sparsity", "export", "data", "loading"},  # the top-level facade
    "keras3": {"core", "weighting", "sparsity", "export"},  # the Keras 3 path: see ONLY; imported by no other part
}

#: Parts that may import from the other parts only these modules. The Keras 3 path takes the
#: modules that import neither `tf_keras` nor tfmot: the argument checks, the outputs-by-task
#: rule, the pure maths of the task weights and of pruning (`sparsity.maths`, `sparsity.densities`:
#: NumPy and `math` only, so both paths run one implementation), and the LiteRT runner
#: (`export.runtimes`: NumPy and a LiteRT package), which verifies its exported files as it does
#: the tf_keras path's.
ONLY = {
    # core.loss_balance: the normalize_losses / loss_scales rules and the starvation warning,
    # pure Python (written against an `ops` namespace), shared so that both paths balance alike.
    "keras3": {f"{PACKAGE}.core.checks", f"{PACKAGE}.core.outputs", f"{PACKAGE}.core.loss_balance",
               f"{PACKAGE}.weighting.maths", f"{PACKAGE}.sparsity.maths",
               f"{PACKAGE}.sparsity.densities", f"{PACKAGE}.export.runtimes"},
}

#: Parts (or single modules) that may import package modules inside functions (to defer heavy
#: imports). `sparsity.methods` is the registry of compression methods that `kmm` builds its
#: parser and checks its flags from before TensorFlow is imported, so its methods import the
#: library (TensorFlow, tfmot) only when they run; `sparsity.budget` gives `kmm compress` its
#: choices and checks the same way (its search is pure Python, its training imports the library).
DEFERRING = {"cli", "loading", "sparsity.methods", "sparsity.budget"}


def modules():
    """`{dotted name: path}` of every module of the package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def part(module):
    """`core`, `weighting`, ... or `""` for the top-level package."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


class _Visitor(ast.NodeVisitor):
    def __init__(self, name, known):
        self.name, self.known = name, known
        self.depth = 0
        self.edges = []        # (target, inside a function)
        self.private = []      # (target, private name)
        self.aliases = {}      # local name -> package module

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, target, node):
        self.edges.append((target, self.depth > 0, node.lineno))

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.startswith(PACKAGE) and alias.name in self.known:
                self._add(alias.name, node)
                if alias.asname:
                    self.aliases[alias.asname] = alias.name

    def visit_ImportFrom(self, node):
        if node.level or not (node.module or "").startswith(PACKAGE):
            return
        base = node.module
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.known:
                self._add(sub, node)
                self.aliases[alias.asname or alias.name] = sub
            else:
                self._add(base, node)
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    self.private.append((base, alias.name, node.lineno))

    def visit_Attribute(self, node):
        if (isinstance(node.value, ast.Name) and node.value.id in self.aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            self.private.append((self.aliases[node.value.id], node.attr, node.lineno))
        self.generic_visit(node)


def graph():
    """`{module: visitor}` for every module of the package."""
    known = modules()
    result = {}
    for name, path in known.items():
        visitor = _Visitor(name, known)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        result[name] = visitor
    return result


def cycles(edges):
    """The strongly connected components of more than one module (Tarjan), or self-imports."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _parents(module):
    """The packages above `module` (importing a module runs their `__init__` first)."""
    pieces = module.split(".")
    return {".".join(pieces[:i]) for i in range(1, len(pieces))}


def analyse():
    """Everything `main` prints, as a dict."""
    g = graph()
    edges = {name: sorted({t for t, _, _ in v.edges if t != name and t not in _parents(name)})
             for name, v in g.items()}
    upward, deferred, private = [], [], []
    for name, v in g.items():
        own = part(name)
        for target, inside, line in v.edges:
            other = part(target)
            if target in _parents(name) or target == name:
                continue
            if other != own and (other not in ALLOWED[own]
                                 or (own in ONLY and target not in ONLY[own])):
                upward.append(f"{name}:{line} imports {target}")
            if inside and own not in DEFERRING and name.removeprefix(PACKAGE + ".") not in DEFERRING:
                deferred.append(f"{name}:{line} imports {target} inside a function")
        for target, attr, line in v.private:
            if target != name:
                private.append(f"{name}:{line} uses {target}.{attr}")
    inside = sum(1 for v in g.values() for _, i, _ in v.edges if i)
    return {
        "modules": len(g),
        "packages": sorted({".".join(n.split(".")[:2]) for n in g if n.count(".") >= 1
                            and (ROOT.parent / n.replace(".", "/")).is_dir()}),
        "arrows": sum(len(t) for t in edges.values()),
        "imports_inside_functions": inside,
        "cycles": cycles(edges),
        "upward": upward,
        "private": private,
        "deferred_outside_cli": deferred,
        "edges": edges,
    }


def layout():
    """docs/layout.md: one line per file of the package, from the first line of its docstring."""
    lines = ["# The package, file by file", "",
             "Generated by `python tools/imports.py --layout > docs/layout.md` (a test checks that it",
             "is fresh). Imports only go down: `core` ← `weighting`; `core` ← `sparsity` ← `export`;",
             "`core` ← `data`; everything ← `loading` ← `cli`; `core.checks`, `core.outputs`,",
             "`core.loss_balance`, `weighting.maths`, `sparsity.maths`, `sparsity.densities`,",
             "`export.runtimes` ← `keras3` (the Keras 3 path, which nothing imports; checked by",
             "`tools/imports.py --check`).", ""]
    order = ["", "core", "weighting", "sparsity", "export", "data", "loading", "cli", "keras3"]
    current = None
    for name, path in sorted(modules().items(), key=lambda item: (order.index(part(item[0])),
                                                                    item[0])):
        folder = part(name)
        if folder != current:
            current = folder
            lines += ["", f"## `{PACKAGE}/{folder + '/' if folder else ''}`", "",
                      "| file | what it holds |", "|---|---|"]
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""
        lines.append(f"| `{path.relative_to(ROOT.parent).as_posix()}` | {first.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a rule is broken")
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON")
    parser.add_argument("--layout", action="store_true", help="print docs/layout.md")
    args = parser.parse_args(argv)
    if args.layout:
        print(layout(), end="")
        return 0
    result = analyse()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for name, targets in sorted(result["edges"].items()):
            short = [t.removeprefix(PACKAGE + ".") for t in targets]
            print(f"{name.removeprefix(PACKAGE + '.') or PACKAGE}: {', '.join(short) or '-'}")
        print(f"\n{result['modules']} modules in {len(result['packages'])} parts, "
              f"{result['arrows']} import arrows, "
              f"{result['imports_inside_functions']} package imports inside functions")
        for key in ("cycles", "upward", "private", "deferred_outside_cli"):
            print(f"{key}: {len(result[key])}")
            for item in result[key]:
                print(f"  {item}")
    broken = any(result[k] for k in ("cycles", "upward", "private", "deferred_outside_cli"))
    return 1 if args.check and broken else 0


if __name__ == "__main__":
    sys.exit(main())
