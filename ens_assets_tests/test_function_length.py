"""No function in ens_assets/ runs to 80 lines or more (nested functions count toward the one they are in):
long ones are split into named steps."""

import ast
from pathlib import Path

import ens_assets

PACKAGE = Path(ens_assets.__file__).resolve().parent
LIMIT = 80


def test_every_function_is_under_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= LIMIT:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named steps: " + "; ".join(long)
