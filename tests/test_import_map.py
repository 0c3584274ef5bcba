"""The import map of the top-level folders (docs/architecture.md): backends <- conformance <- reports, each
importing only folders below it; benchmarks/ and tools/ may import any of them, and no folder imports them.
Every import counts, a function's lazy one too (it is a dependency all the same); a name looked up by path
(the backend registry, the CLI's COMMANDS table) is a plug-in point, not an import."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("backends", "conformance", "reports")  # lowest first: a layer imports only the ones before it
FREE = ("benchmarks", "tools")  # may import any layer; imported by none
FOLDERS = LAYERS + FREE


def folder_of(module: str) -> str | None:
    """The top-level folder an absolute module name lives in (resconf.X... or benchmarks...), else None."""
    parts = module.split(".")
    if parts[0] == "resconf" and len(parts) > 1 and parts[1] in FOLDERS:
        return parts[1]
    return parts[0] if parts[0] in FREE else None


def imports_of(path: Path, root: Path) -> list[tuple[int, str, str]]:
    """(line, imported module, its folder) for every import in the file that lands in a top-level folder."""
    folder, *subfolders = path.relative_to(root).parent.parts
    package = (["resconf"] if folder in LAYERS else []) + [folder, *subfolders]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: from the file's own package up
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [f"{module}.{alias.name}" for alias in node.names] if module == "resconf" else [module]
        else:
            continue
        found += [(node.lineno, name, target) for name in names if (target := folder_of(name))]
    return found


def import_map(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """(importing folder, imported folder) -> where: 'file:line imports module', for every pair of folders."""
    edges: dict[tuple[str, str], list[str]] = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            for line, name, target in imports_of(path, root):
                if target != folder:
                    edges.setdefault((folder, target), []).append(f"{path.relative_to(root)}:{line} imports {name}")
    return edges


def layering_errors(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    errors = []
    for (source, target), where in sorted(edges.items()):
        if source in FREE:
            continue
        if target in FREE:
            errors.append(f"{where[0]}: {source}/ imports {target}/; expected none: {target}/ imports the layers, "
                          "no layer imports it (docs/architecture.md)")
        elif LAYERS.index(target) > LAYERS.index(source):
            below = [f"{f}/" for f in LAYERS[:LAYERS.index(source)]]
            errors.append(f"{where[0]}: {source}/ imports {target}/, a layer above it; expected only "
                          f"{', '.join(below) or 'no other folder'} (docs/architecture.md)")
    return errors


def cycle(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    """A cycle of folders (each importing the next, the last the first), or [] when there is none."""
    graph = {f: sorted(t for s, t in edges if s == f) for f in FOLDERS}

    def walk(path: list[str]) -> list[str]:
        for nxt in graph[path[-1]]:
            if nxt == path[0]:
                return path
            if nxt not in path and (found := walk(path + [nxt])):
                return found
        return []

    return next((found for start in FOLDERS if (found := walk([start]))), [])


def test_no_folder_imports_a_folder_above_it():
    errors = layering_errors(import_map())
    assert not errors, "imports against the layering:\n" + "\n".join(errors)


def test_no_cycle_between_folders():
    edges = import_map()
    found = cycle(edges)
    assert not found, ("folders import each other in a cycle: " + " -> ".join(found + found[:1]) + "\n"
                       + "\n".join(edges[(a, b)][0] for a, b in zip(found, found[1:] + found[:1])))


def test_the_map_sees_lazy_and_relative_imports(tmp_path):
    """The checks can fail: a lazy import inside a function, a relative one that climbs out of its folder,
    and an import of tools/ or benchmarks/ are all read."""
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "backends" / "oracle").mkdir()
    (tmp_path / "backends" / "oracle" / "a.py").write_text("from . import b\ndef f():\n"
                                                         "    from resconf.conformance import cli\n")
    (tmp_path / "conformance" / "b.py").write_text("from .c import x\nimport resconf.backends.base\n")
    (tmp_path / "reports" / "c.py").write_text("from ..conformance import results\nimport benchmarks.common\n")
    edges = import_map(tmp_path)
    assert set(edges) == {("backends", "conformance"), ("conformance", "backends"), ("reports", "conformance"),
                          ("reports", "benchmarks")}
    assert layering_errors(edges) == [
        "backends/oracle/a.py:3 imports resconf.conformance: backends/ imports conformance/, a layer above it; "
        "expected only no other folder (docs/architecture.md)",
        "reports/c.py:2 imports benchmarks.common: reports/ imports benchmarks/; expected none: benchmarks/ "
        "imports the layers, no layer imports it (docs/architecture.md)"]
    assert cycle(edges) == ["backends", "conformance"]


def test_the_supervisor_imports_no_part_of_the_pytest_plugin():
    """`resconf check` shares its workers' constants through conformance/constants.py, not the plugin."""
    code = ("import sys, resconf.conformance.cli, resconf.conformance.check, resconf.conformance.merge\n"
            "print(sorted(m for m in sys.modules if m.startswith('resconf.conformance.plugin')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", f"the supervisor imported the plugin's modules: {proc.stdout.strip()}"


# Inside backends/: the API modules at its root (base, contract, config, dtypes, params, tensor_parallel, ...)
# import no subfolder, so an adapter author reads them alone; the subfolders import the root and those below.
BACKEND_LAYERS = ("", "oracle", "parallel", "torch", "jax", "kernels", "modules")  # "" = backends/ itself


def backend_edges(root: Path = ROOT) -> dict[tuple[str, str], str]:
    """(importing subfolder, imported subfolder) -> the first 'file:line imports module', inside backends/."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted((root / "backends").rglob("*.py")):
        parts = path.relative_to(root / "backends").parts
        source = parts[0] if len(parts) > 1 else ""
        for line, name, target in imports_of(path, root):
            inner = name.split(".")[2:] if target == "backends" else []
            sub = inner[0] if inner and (root / "backends" / inner[0]).is_dir() else ""
            if target == "backends" and sub != source:
                edges.setdefault((source, sub), f"{path.relative_to(root)}:{line} imports {name}")
    return edges


def backend_layering_errors(edges: dict[tuple[str, str], str]) -> list[str]:
    return [f"{where}: backends/{source or ''} imports backends/{target}/, a layer above it; expected only "
            f"{', '.join(f'backends/{f}' for f in BACKEND_LAYERS[:BACKEND_LAYERS.index(source)]) or 'none'}"
            for (source, target), where in sorted(edges.items())
            if BACKEND_LAYERS.index(target) > BACKEND_LAYERS.index(source)]


def test_inside_backends_the_api_imports_no_subfolder_and_subfolders_form_layers():
    errors = backend_layering_errors(backend_edges())
    assert not errors, "imports against backends/' layering:\n" + "\n".join(errors)


def test_the_backends_map_sees_an_api_module_importing_a_subfolder(tmp_path):
    (tmp_path / "backends" / "torch").mkdir(parents=True)
    (tmp_path / "backends" / "oracle").mkdir()
    (tmp_path / "backends" / "base.py").write_text("def f():\n    from resconf.backends.torch import tp\n")
    (tmp_path / "backends" / "oracle" / "ref.py").write_text("from resconf.backends import base\n")
    errors = backend_layering_errors(backend_edges(tmp_path))
    assert errors == ["backends/base.py:2 imports resconf.backends.torch: backends/ imports backends/torch/, "
                      "a layer above it; expected only none"]


def test_ml_dtypes_is_imported_only_when_a_narrow_type_is_used():
    """Importing ml_dtypes 0.7 takes ~1 s, so the supervisor, `resconf --help` and a float32 case never do;
    a bfloat16 value imports it on first use (backends/dtypes.py)."""
    code = ("import sys, numpy as np, resconf.conformance.cli, resconf.conformance.check, resconf.conformance.merge\n"
            "from resconf.backends.dtypes import round_to, unit_roundoff\n"
            "from resconf.backends.registry import load_backend\n"
            "load_backend('numpy').stack_forward\n"
            "round_to(np.ones(3), 'float32'); unit_roundoff('float16')\n"
            "print('ml_dtypes' in sys.modules, end=' ')\n"
            "print(round_to(np.array([1 + 2**-9]), 'bfloat16')[0], 'ml_dtypes' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False 1.0 True", proc.stderr[-2000:] or proc.stdout
