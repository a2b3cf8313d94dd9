"""The shape of the package: no import cycle among minift modules, minift/nn/ independent of
minift/models/, and no file over MAX_LINES lines without a sentence saying why.

The import graph has an edge A -> B for every import of a minift module in A, at any depth of the
file: inside functions and under `if TYPE_CHECKING:` too. An import moved into a function only hides
a cycle from Python; the two files still need each other to be read and understood. Resolution, as
Python does it: `from minift.x import y` points at the module minift.x.y when there is one, else at
minift.x (a package's __init__.py is the module minift.x); `import minift.x.y` and relative imports
(`from .files import z`) point at the module they name.

A file longer than MAX_LINES lines says why in its module docstring, in a sentence at the start of a
line, starting with WHY_LONG ("Long because it holds one whole architecture, ..."): a model file
holding one whole architecture may be long; anything else is usually two concepts that want two files.

The helpers take the package folder as an argument, so the tests at the end run them on planted
cycles in a copy of the package.
"""

import ast
import shutil
from collections import deque
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "minift"
MAX_LINES = 400
WHY_LONG = "Long because"


# ----------------------------------------------------------------------------------------------------
# The import graph
# ----------------------------------------------------------------------------------------------------


def modules_of(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder (whose own name is the
    top-level name): minift/peft/lora.py -> minift.peft.lora, minift/peft/__init__.py -> minift.peft."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its file."""
    modules = modules_of(package)

    def existing(name: str) -> str | None:
        """The module `name` refers to: itself, or the longest enclosing package that exists."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        # The package a relative import starts from: the module's own for __init__.py, else its parent's.
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):  # every depth
            if isinstance(node, ast.Import):
                targets.update(existing(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # from . import x (level 1), from .. import x (level 2), ...
                    base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for alias in node.names:  # a submodule of that name wins over a name in its __init__
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else existing(base))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every group of modules that import each other (a strongly connected component), as the shortest
    cycle through each of its modules: "a -> b -> a". Empty when the graph has no cycle."""
    reach = {module: _reachable(graph, module) for module in graph}
    found = []
    for module in sorted(graph):
        component = {other for other in reach[module] if module in reach[other]}  # mutual reachability
        for start in sorted(component):
            cycle = _shortest_cycle(graph, start, component)
            i = cycle.index(min(cycle[:-1]))  # the same cycle found from each member: start it at its min
            text = " -> ".join(cycle[i:-1] + cycle[:i] + [cycle[i]])
            if text not in found:
                found.append(text)
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules reachable from `start` by one or more edges (`start` itself only through a cycle)."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _shortest_cycle(graph: dict[str, set[str]], start: str, component: set[str]) -> list[str]:
    """[start, ..., start] by breadth-first search inside the component."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                path = [node]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{start} is in a component but on no cycle")


def imports_between(graph: dict[str, set[str]], importer: str, imported: str) -> list[str]:
    """'a -> b' for each edge from the package `importer` (or a module in it) into the package `imported`."""
    def inside(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    return sorted(f"{module} -> {target}" for module, targets in graph.items() if inside(module, importer)
                  for target in targets if inside(target, imported))


# ----------------------------------------------------------------------------------------------------
# Long files
# ----------------------------------------------------------------------------------------------------


def long_files_without_reason(package: Path) -> list[str]:
    """'path (N lines)' for each file over MAX_LINES whose docstring has no line starting with WHY_LONG."""
    offenders = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        docstring = ast.get_docstring(ast.parse(text, str(path))) or ""
        if lines > MAX_LINES and not any(line.startswith(WHY_LONG) for line in docstring.splitlines()):
            offenders.append(f"{path.relative_to(package.parent)} ({lines} lines)")
    return offenders


# ----------------------------------------------------------------------------------------------------
# The package as it is
# ----------------------------------------------------------------------------------------------------


def test_no_import_cycles():
    found = cycles(import_graph(PACKAGE))
    assert not found, ("import cycles among minift modules (imports inside functions and under "
                       "TYPE_CHECKING count):\n  " + "\n  ".join(found)
                       + "\nmove what both sides need into a module that neither imports")


def test_nn_imports_nothing_from_models():
    """nn/ holds the generic pieces (attention, LayerNorm, ...) that every model file builds on."""
    wrong = imports_between(import_graph(PACKAGE), "minift.nn", "minift.models")
    assert not wrong, "minift/nn/ must not import from minift/models/:\n  " + "\n  ".join(wrong)


def test_long_files_say_why():
    offenders = long_files_without_reason(PACKAGE)
    assert not offenders, (f"files over {MAX_LINES} lines whose module docstring has no line starting with "
                           f"{WHY_LONG!r} (split the file, or say why it is one):\n  " + "\n  ".join(offenders))


def test_the_graph_sees_the_package():
    """Known edges of every kind, so that an empty graph cannot pass the cycle test."""
    graph = import_graph(PACKAGE)
    assert "minift.peft.lora" in graph["minift.peft"]  # from minift.peft.lora import ..., in an __init__
    assert "minift.peft.freezing" in graph["minift.peft.setup"]  # from minift.peft import freezing: the submodule
    assert "minift.models.architectures" in graph["minift.peft.freezing"]
    assert "minift.hub" in graph["minift.models.pretrained"]  # imported inside a function
    assert "minift.io" in graph["minift.checkpoint.files"]


# ----------------------------------------------------------------------------------------------------
# The checks can fail: planted cycles in a copy of the package, and small packages written here
# ----------------------------------------------------------------------------------------------------


def copy_of_package(tmp_path: Path) -> Path:
    copy = tmp_path / "minift"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "demo"))
    return copy


def plant(path: Path, text: str) -> None:
    """Add `text` after the module docstring and the imports of `path`: at the end is enough for ast."""
    path.write_text(path.read_text(encoding="utf-8") + "\n" + text, encoding="utf-8")


def test_a_type_checking_import_cycle_is_found(tmp_path):
    package = copy_of_package(tmp_path)
    # io.py is imported by checkpoint/files.py; a type-only import back closes a cycle.
    plant(package / "io.py", "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                             "    from minift.checkpoint.files import CheckpointError\n")
    found = cycles(import_graph(package))
    assert "minift.checkpoint.files -> minift.io -> minift.checkpoint.files" in found


def test_an_import_inside_a_function_cycle_is_found(tmp_path):
    package = copy_of_package(tmp_path)
    # losses.py is imported by models/heads.py; a late import back, inside a function, closes a cycle.
    plant(package / "losses.py", "def _late():\n    from minift.models import heads\n\n    return heads\n")
    found = cycles(import_graph(package))
    assert "minift.losses -> minift.models.heads -> minift.losses" in found


def test_nn_importing_models_is_found(tmp_path):
    package = copy_of_package(tmp_path)
    plant(package / "nn" / "attention.py", "def _late():\n    import minift.models.bert\n")
    assert imports_between(import_graph(package), "minift.nn", "minift.models") == [
        "minift.nn.attention -> minift.models.bert"]


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root / "pkg"


def test_graph_rules_on_a_small_package(tmp_path):
    package = write_package(tmp_path, {
        "pkg/__init__.py": "from pkg.sub import thing\n",  # a name from a package: the __init__
        "pkg/sub/__init__.py": "thing = 1\n",
        "pkg/sub/mod.py": "from . import other\nfrom .. import top\nimport pkg.sub\n",  # relative, 2 levels
        "pkg/sub/other.py": "import os\nimport torch.nn\n",  # outside the package: no edge
        "pkg/top.py": "from pkg.sub import mod\n",  # a submodule wins over a name in the __init__
    })
    assert import_graph(package) == {
        "pkg": {"pkg.sub"},
        "pkg.sub": set(),
        "pkg.sub.mod": {"pkg.sub.other", "pkg.top", "pkg.sub"},
        "pkg.sub.other": set(),
        "pkg.top": {"pkg.sub.mod"},
    }
    assert cycles(import_graph(package)) == ["pkg.sub.mod -> pkg.top -> pkg.sub.mod"]


def test_every_cycle_of_a_component_is_named(tmp_path):
    package = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg import b, c\n",
        "pkg/b.py": "from pkg import a\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n",
        "pkg/d.py": "from pkg import a\n",  # imports the cycle, is not on it
    })
    assert cycles(import_graph(package)) == ["pkg.a -> pkg.b -> pkg.a", "pkg.a -> pkg.c -> pkg.a"]


def test_long_files_are_named(tmp_path):
    package = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/short.py": '"""Short."""\n' + "x = 1\n" * MAX_LINES,  # MAX_LINES + 1 lines: too long
        "pkg/explained.py": f'"""Two things.\n\n{WHY_LONG} it must be.\n"""\n' + "x = 1\n" * MAX_LINES,
        "pkg/fine.py": "x = 1\n" * MAX_LINES,
    })
    assert long_files_without_reason(package) == [f"pkg/short.py ({MAX_LINES + 1} lines)"]
