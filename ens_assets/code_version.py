"""The version of the code that produced an artefact: a hash of the project's own modules it runs.

Found by reading imports (the module's and its functions' own, followed through the package), so it holds
exactly the sources that can change the result: an edit to training/loop.py retrains every checkpoint, an
edit to ensemble/ retrains none. The hash is of each module's syntax tree without docstrings, so comments
and docstrings never cost a retrain.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Iterable

PACKAGE = "ens_assets"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_path(module: str) -> Path | None:
    """The source file of a module of this package (a package's __init__.py), or None when there is none."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    parts = module.split(".")[1:]
    candidate = PACKAGE_DIR.joinpath(*parts)
    if candidate.is_dir() and (candidate / "__init__.py").is_file():
        return candidate / "__init__.py"
    file = candidate.with_suffix(".py")
    return file if file.is_file() else None


def _imports(module: str, path: Path) -> frozenset[str]:
    """Modules of this package that `module` imports anywhere in its file (top level or inside functions)."""
    stat = path.stat()
    names = _imported_names(module, str(path), stat.st_mtime_ns, stat.st_size)
    return frozenset(name for name in names if module_path(name) is not None)


# Keyed by the file's mtime and size as well as its path: a process that fingerprints many checkpoints parses
# each source once, and an edited file (new mtime or size) is parsed again.
@lru_cache(maxsize=512)
def _imported_names(module: str, file: str, mtime_ns: int, size: int) -> frozenset[str]:
    """Every name `module` imports (any package), from its file's syntax."""
    path = Path(file)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=file)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return frozenset(found)


def module_closure(roots: Iterable[str], skip: Iterable[str] = ()) -> list[str]:
    """Every module of this package that the roots import, transitively (roots included), minus `skip` and
    what is reachable only through it; sorted."""
    skipped = set(skip)
    seen: set[str] = set()
    todo = [r for r in roots if r not in skipped]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_path(module)
        if path is None:
            raise ValueError(f"{module} is not a module of {PACKAGE}")
        seen.add(module)
        # `import ens_assets.a.b` also runs ens_assets/__init__ and ens_assets/a/__init__.
        parents = [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)]
        todo += [m for m in (*_imports(module, path), *parents) if m not in seen and m not in skipped]
    return sorted(seen)


def source_files(modules: Iterable[str]) -> list[Path]:
    return [p for p in (module_path(m) for m in modules) if p is not None]


def has_code(module: str) -> bool:
    """False for a module that is only a docstring (an __init__.py that documents its package)."""
    path = module_path(module)
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def code_version(roots: Iterable[str], skip: Iterable[str] = ()) -> str:
    """16 hex digits over the syntax of every module in the closure of `roots`."""
    digest = hashlib.sha256()
    for module in module_closure(roots, skip):
        path = module_path(module)
        stat = path.stat()
        digest.update(f"{module}\t{_syntax_hash(str(path), stat.st_mtime_ns, stat.st_size)}\n".encode())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=512)
def _syntax_hash(path: str, mtime_ns: int, size: int) -> str:
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()[:16]
