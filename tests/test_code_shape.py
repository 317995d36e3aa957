"""The package stays readable: no file in mot_parallel/ over 300 lines, no function over 60 lines
(style rule of the project; tools' argparse-heavy mains are not checked)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "mot_parallel"
MAX_FILE, MAX_FUNCTION = 300, 60


def test_files_and_functions_stay_short():
    too_long = []
    for path in sorted(ROOT.rglob("*.py")):
        source = path.read_text()
        rel = path.relative_to(ROOT.parent)
        if source.count("\n") > MAX_FILE:
            too_long.append(f"{rel}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION:
                    too_long.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "split these:\n" + "\n".join(too_long)
