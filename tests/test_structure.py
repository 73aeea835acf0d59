"""The house rules of the layout (docs/ARCHITECTURE.md, "Module map"), read from the imports with ``ast``:
nothing is imported or run.

- ``main/``'s top level holds the doors (modules a user runs, with a ``__main__`` block) and the seed's
  Trainer, at most 10 files; the machinery lives in rooms (``main/<room>/``, ``models/``, ``dataset/``,
  ``utils/``, ``loss/``), and rooms never import doors.
- Training (``main/train.py`` and everything it imports) never imports the inference machinery.
- ``models/``, ``dataset/``, ``utils/`` and ``loss/`` never import ``main/``.
- A name is imported from the module that defines it: no re-exports, tests and scripts included.
- No import cycles; no source file over 400 lines.
"""
import ast
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("main", "models", "dataset", "utils", "loss", "scripts", "tests")
LOWER = ("models", "dataset", "utils", "loss")
TRAINING = ("main.train", "main.train_eval_loop")
INFERENCE = "main.infer"
MAX_LINES = 400
MAX_MAIN_FILES = 11


def tracked_sources(root: str = REPO) -> list[str]:
    """Repo-relative paths of the tracked (and untracked, not ignored) .py files."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return sorted(p for p in out.split() if os.path.isfile(os.path.join(root, p)))


def module_name(path: str) -> str:
    name = path[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


class House:
    """Every project module: its tree, what it defines at the top level, what it imports."""

    def __init__(self, root: str = REPO):
        self.root = root
        self.paths = {module_name(p): p for p in tracked_sources(root)}
        self.trees = {m: ast.parse(open(os.path.join(root, p), encoding="utf-8").read(), p)
                      for m, p in self.paths.items()}

    def is_project(self, name: str) -> bool:
        return name.split(".")[0] in PACKAGES or name in self.paths

    def is_package(self, module: str) -> bool:
        return self.paths.get(module, "").endswith("__init__.py")

    def imports(self, module: str) -> list[tuple[str, str | None, int]]:
        """(module imported, name imported from it or None, line) for every import, function-level included."""
        out = []
        for node in ast.walk(self.trees[module]):
            if isinstance(node, ast.Import):
                out += [(a.name, None, node.lineno) for a in node.names if self.is_project(a.name)]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and self.is_project(node.module):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in self.paths:  # `from pkg import module`
                        out.append((sub, None, node.lineno))
                    else:
                        out.append((node.module, a.name, node.lineno))
        return out

    def edges(self, module: str) -> set[str]:
        """Project modules ``module`` imports (a dotted import also loads its parent packages' __init__)."""
        return {m for m, _, _ in self.imports(module) if m in self.paths and m != module}

    def defined(self, module: str) -> set[str]:
        """Names bound at the top level by def / class / assignment (not by an import)."""
        names: set[str] = set()

        def visit(body):
            for node in body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
                    targets = (node.targets if isinstance(node, ast.Assign) else
                               [i.optional_vars for i in node.items if i.optional_vars] if isinstance(node, ast.With)
                               else [node.target])
                    for t in targets:
                        names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
                    if isinstance(node, (ast.For, ast.With)):
                        visit(node.body)
                elif isinstance(node, ast.If):
                    visit(node.body)
                    visit(node.orelse)
                elif isinstance(node, ast.Try):
                    visit(node.body)
                    for h in node.handlers:
                        visit(h.body)
                    visit(node.orelse)
                    visit(node.finalbody)
        visit(self.trees[module].body)
        return names

    def reachable(self, start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m not in seen and m in self.paths:
                seen.add(m)
                todo += self.edges(m)
        return seen

    def doors(self) -> set[str]:
        return {m for m, p in self.paths.items() if p.startswith("main/") and p.count("/") == 1
                and any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in self.trees[m].body)}


@pytest.fixture(scope="module")
def house():
    return House()


def door_problems(house: House) -> list[str]:
    problems = []
    top = sorted(p for p in house.paths.values() if p.startswith("main/") and p.count("/") == 1)
    if len(top) > MAX_MAIN_FILES:
        problems.append(f"main/ holds {len(top)} files at its top level (at most {MAX_MAIN_FILES}): {top}")
    doors = house.doors()
    for p in top:
        m = module_name(p)
        if m not in doors and m not in ("main", "main.train_eval_loop"):
            problems.append(f"{p} has no __main__ block: machinery belongs in a room (main/<room>/)")
    for m in house.paths:
        if m in doors or m.split(".")[0] in ("tests", "scripts") or m in ("train", "inference"):
            continue
        for imp, _, line in house.imports(m):
            if imp in doors:
                problems.append(f"{house.paths[m]}:{line} imports the door {imp}: rooms never import doors")
    return problems


def layer_problems(house: House) -> list[str]:
    problems = []
    for m, p in house.paths.items():
        if m.split(".")[0] in LOWER:
            problems += [f"{p}:{line} imports {imp}: {m.split('.')[0]}/ never imports main/"
                         for imp, _, line in house.imports(m) if imp.split(".")[0] == "main"]
    for t in TRAINING:
        bad = sorted(m for m in house.reachable(t) if m == INFERENCE or m.startswith(INFERENCE + "."))
        if bad:
            problems.append(f"training ({t}) reaches the inference machinery: {bad}")
    return problems


def reexport_problems(house: House) -> list[str]:
    problems = []
    for m, p in house.paths.items():
        for imp, name, line in house.imports(m):
            if name is None or imp not in house.paths or name == "*":
                continue
            if name not in house.defined(imp):
                problems.append(f"{p}:{line} imports {name} from {imp}, which does not define it")
    return problems


def cycles(house: House) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(house.edges(v)):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(house.paths):
        if v not in index:
            strong(v)
    return out


def long_files(house: House) -> list[str]:
    out = []
    for p in house.paths.values():
        with open(os.path.join(house.root, p), encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            out.append(f"{p}: {n} lines")
    return out


def test_main_is_doors_and_rooms_never_import_doors(house):
    assert house.doors() >= {"main.train", "main.inference", "main.render", "main.evaluate", "main.export"}
    assert door_problems(house) == []


def test_lower_layers_and_training_stay_out_of_main_and_inference(house):
    assert layer_problems(house) == []


def test_names_are_imported_from_their_home(house):
    assert reexport_problems(house) == []


def test_no_import_cycles(house):
    assert cycles(house) == []


def test_no_source_file_over_400_lines(house):
    assert long_files(house) == []


def test_the_rules_catch_a_violation(tmp_path):
    """Each rule fails on a small house that breaks it (so a green run means something)."""
    files = {
        "main/__init__.py": "",
        "main/train.py": "from main.infer.pipeline import run\nif __name__ == '__main__':\n    run()\n",
        "main/helper.py": "X = 1\n",
        "main/infer/__init__.py": "",
        "main/infer/pipeline.py": "from main.train import run\nfrom main.infer.other import Y\ndef run():\n    pass\n",
        "main/infer/other.py": "from main.helper import X\nfrom main.infer.pipeline import run\nY = X\n",
        "models/__init__.py": "",
        "models/m.py": "import main.helper\n" + "x = 1\n" * (MAX_LINES + 1),
    }
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    bad = House(str(tmp_path))
    assert any("main/helper.py has no __main__ block" in p for p in door_problems(bad))
    assert any("imports the door main.train" in p for p in door_problems(bad))
    assert any("models/m.py" in p for p in layer_problems(bad))
    assert any("training (main.train) reaches" in p for p in layer_problems(bad))
    assert any("imports X from main.helper" not in p and "imports run from main.train" in p
               for p in reexport_problems(bad))
    assert any({"main.infer.other", "main.infer.pipeline"} <= set(c) for c in cycles(bad))
    assert long_files(bad) == [f"models/m.py: {MAX_LINES + 2} lines"]
