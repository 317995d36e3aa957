"""The package stays readable: no file in mot_parallel/ over 300 lines, no function over 60 lines
(style rule of the project; tools' argparse-heavy mains are not checked), no function naming more than
8 parameters (more travel in a named record), and no `**kwargs` that swallows keywords unread."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "mot_parallel"
MAX_FILE, MAX_FUNCTION, MAX_PARAMETERS = 300, 60, 8


def _functions():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield rel, node


def test_files_and_functions_stay_short():
    too_long = []
    for path in sorted(ROOT.rglob("*.py")):
        source = path.read_text()
        rel = path.relative_to(ROOT.parent)
        if source.count("\n") > MAX_FILE:
            too_long.append(f"{rel}: {source.count(chr(10))} lines")
    for rel, node in _functions():
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION:
            too_long.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "split these:\n" + "\n".join(too_long)


def named_parameters(node) -> list:
    """Positional and keyword-only parameters, without self / cls; *args and **kwargs are not named."""
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def test_functions_name_at_most_8_parameters():
    """Interfaces by name, not by position: a function needing more than 8 inputs takes a named record
    (a dataclass) instead. Megatron's call contracts name their leading arguments and check the rest
    (mot_parallel/megatron/call_keywords.py)."""
    wide = [f"{rel}:{node.lineno} {node.name}(): {len(named_parameters(node))} parameters"
            for rel, node in _functions()
            if len(named_parameters(node)) > MAX_PARAMETERS]
    assert not wide, "group these parameters into a record:\n" + "\n".join(wide)


def test_every_keyword_catch_all_is_read():
    """A `**kwargs` is read by its function (handed on, or checked and refused by name), never a sink that
    silently ignores what a caller meant."""
    unread = []
    for rel, node in _functions():
        kwarg = node.args.kwarg
        if kwarg is None:
            continue
        if not any(isinstance(n, ast.Name) and n.id == kwarg.arg for stmt in node.body for n in ast.walk(stmt)):
            unread.append(f"{rel}:{node.lineno} {node.name}(**{kwarg.arg})")
    assert not unread, "check or hand on these keywords:\n" + "\n".join(unread)


def test_the_checks_see_wide_and_swallowing_functions():
    """The checks are not vacuous: they count what a wide signature and an unread **kwargs look like."""
    tree = ast.parse("class A:\n def f(self, a, b, c, d, e, f, g, h, i, *args, j=1, **unused): pass\n"
                     "def g(a, /, b, *, c, **kw): return kw")
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert len(named_parameters(functions["f"])) == 10 and named_parameters(functions["g"]) == ["a", "b", "c"]
