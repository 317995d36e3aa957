"""The commands and references of README.md and docs/*.md, read as a user would copy them.

A page's fenced blocks follow one convention (tests/test_docs.py holds every page to it):

    ```bash               each line runs as written: it is parsed by the script's own argument parser (and
                          run whole when it is itself a --help, --dry-run or --check command); configs and
                          key=value overrides are loaded
    ```bash illustrative  lines that need the reader's files or machines: not run, but the script, the
                          repository files, the --options and the key=value overrides they name must exist
    ```python             compiled; the mot_parallel names it imports exist
    ```yaml               a config fragment: loaded against the schema
    ```text, ```json      output shown to the reader

Run as a script (`python tests/doc_commands.py ITEMS.json RESULTS.json`) it parses or runs the given `bash`
commands in one process, so that torch and the tools' imports load once.
"""
import argparse
import ast
import contextlib
import dataclasses
import io
import json
import os
import re
import runpy
import shlex
import signal
import sys
import time
import typing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCES = {"bash", "python", "yaml", "text", "json"}
REPO_DIRS = ("mot_parallel/", "tools/", "launch/", "configs/", "tests/", "docs/")
SECTIONS = ("model", "diffusion", "parallel", "train", "data", "checkpoint", "logging", "run")
FILE_SUFFIXES = (".py", ".yaml", ".json", ".jsonl", ".safetensors", ".md", ".png", ".bin", ".idx", ".npz",
                 ".npy", ".txt", ".sh", ".patches")
RUN_FLAGS = ("--help", "-h", "--dry-run", "--check")  # a line with one of these runs whole
LAUNCHERS = ("deepspeed", "torchrun")


@dataclasses.dataclass
class Fence:
    page: str        # path relative to the repository root
    line: int        # line of the opening fence
    lang: str
    illustrative: bool
    body: str


@dataclasses.dataclass
class Command:
    page: str
    line: int
    text: str
    argv: list       # after environment assignments and launcher options: [program, args...]
    illustrative: bool

    @property
    def where(self):
        return f"{self.page}:{self.line}"


def pages():
    docs = sorted(f"docs/{n}" for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md"))
    return ["README.md"] + docs


def fences(page):
    """Every fenced block of a page; an unclosed fence or an unknown info string is an error."""
    out, lines = [], open(os.path.join(ROOT, page)).read().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(.*)$", lines[i])
        if not m:
            i += 1
            continue
        words = m.group(2).split()
        lang, extra = (words[0] if words else ""), words[1:]
        if lang not in FENCES or extra not in ([], ["illustrative"]) or (extra and lang != "bash"):
            raise ValueError(f"{page}:{i + 1}: fence info {m.group(2)!r}: use one of "
                             f"{sorted(FENCES)} (or `bash illustrative`)")
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: unclosed fence")
        out.append(Fence(page, i + 1, lang, bool(extra), "\n".join(lines[i + 1:end])))
        i = end + 1
    return out


def commands(fence):
    """The shell lines of a bash fence: continuations joined, comments and environment assignments dropped."""
    out, pending, start = [], "", 0
    for k, raw in enumerate(fence.body.split("\n")):
        if not pending:
            start = fence.line + 1 + k
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        words = shlex.split(pending, comments=True)
        text, pending = pending, ""
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words.pop(0)
        if words and words[0] in LAUNCHERS:  # the launcher's own options, up to the script
            words = words[[i for i, w in enumerate(words) if w.endswith(".py")][0]:]
            words.insert(0, "python")
        if words:
            out.append(Command(fence.page, start, text.strip(), words, fence.illustrative))
    return out


def target(argv):
    """('script', path, args) | ('module', name, args) | ('shell', path, args) | ('pip', None, args) | None."""
    prog, args = argv[0], argv[1:]
    if prog in ("python", "python3"):
        if args[:1] == ["-m"]:
            return "module", args[1], args[2:]
        return "script", args[0], args[1:]
    if prog.startswith(REPO_DIRS):
        return "shell", prog, args
    if prog == "pip":
        return "pip", None, args
    return None


# ---- static checks: names that must exist ------------------------------------------------------------------

def schema_key_error(key):
    """None when `key` (a dotted config key) exists in the schema, else why not."""
    from mot_parallel.config.schema import Config
    tp, parts = Config, key.split(".")
    for i, name in enumerate(parts):
        if tp is dict or tp is typing.Any:
            return None
        origin = typing.get_origin(tp)
        if origin is dict or origin is typing.Dict:
            tp = typing.get_args(tp)[1]  # a free name (a modality), then its value type
            continue
        if not dataclasses.is_dataclass(tp):
            return f"{'.'.join(parts[:i])} has no sub-keys"
        hints = typing.get_type_hints(tp)
        if name not in hints:
            return f"no config key {'.'.join(parts[:i + 1])}"
        tp = hints[name]
        if typing.get_origin(tp) is typing.Union:  # Optional[X]
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return None


def is_config_key(token):
    return re.match(rf"^({'|'.join(SECTIONS)})\.[A-Za-z_][\w.]*$", token) and not token.endswith(FILE_SUFFIXES)


def repo_path_error(token):
    """None unless `token` names a repository path (no placeholders) that does not exist."""
    if not token.startswith(REPO_DIRS) or re.search(r"[<>{}*\[\]|$]", token):
        return None
    path = token.split("#")[0].rstrip(".,:;)")
    return None if os.path.exists(os.path.join(ROOT, path)) else f"{path} does not exist"


def setup_extras():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return {k.value for k in node.value.keys}
    return set()


def static_errors(cmd):
    """What a command names that does not exist: program, repository files, options, config keys."""
    errors, kind = [], target(cmd.argv)
    if kind is None:
        if not cmd.illustrative:
            errors.append(f"`{cmd.argv[0]}` is not a project command: mark the fence `bash illustrative`")
        return errors
    what, path, args = kind
    if what == "pip":
        for a in args:
            m = re.match(r"^\.\[(.*)\]$", a)
            for extra in (m.group(1).split(",") if m else []):
                if extra not in setup_extras():
                    errors.append(f"setup.py has no extra {extra!r}")
            if a.startswith(REPO_DIRS) and repo_path_error(a):
                errors.append(repo_path_error(a))
        return errors
    if what == "module":
        source_file = os.path.join(ROOT, *path.split(".")) + "/__main__.py"
    else:
        source_file = os.path.join(ROOT, path)
        if not os.path.isfile(source_file):
            return [f"{path} does not exist"]
        if what == "shell" and not os.access(source_file, os.X_OK):
            errors.append(f"{path} is not executable")
    source = open(source_file).read() if os.path.isfile(source_file) else ""
    for a in args:
        option = a.split("=")[0] if a.startswith("--") else None
        if option in RUN_FLAGS:
            continue
        if option and f'"{option}"' not in source and f"'{option}'" not in source and \
                not (what == "shell" and option in source):
            errors.append(f"{path} has no option {option}")
        elif not a.startswith("-") and "=" in a and is_config_key(a.split("=")[0]):
            errors.append(schema_key_error(a.split("=")[0]))
        else:
            errors.append(repo_path_error(a))
    return [e for e in errors if e]


def prose_errors(page):
    """Outside fences: links to missing pages or headings, backticked repository paths and config keys that
    do not exist."""
    text = open(os.path.join(ROOT, page)).read()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    errors = []
    for link in re.findall(r"\]\(([^)\s]+)\)", prose):
        if "://" in link:
            continue
        file, _, anchor = link.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        if not os.path.exists(os.path.join(ROOT, path)):
            errors.append(f"{page}: link {link}: {path} does not exist")
        elif anchor and anchor not in anchors(path):
            errors.append(f"{page}: link {link}: no heading #{anchor} in {path}")
    for code in re.findall(r"`([^`\n]+)`", prose):
        for token in code.split():
            key = re.split(r"[=:]", token)[0]
            if is_config_key(key) and schema_key_error(key):
                errors.append(f"{page}: `{code}`: {schema_key_error(key)}")
            elif repo_path_error(token):
                errors.append(f"{page}: `{code}`: {repo_path_error(token)}")
    return errors


def anchors(page):
    """GitHub's heading anchors of a page."""
    heads = re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", open(os.path.join(ROOT, page)).read(), flags=re.S),
                       flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


# ---- the runner: parse (or run) commands in one process ----------------------------------------------------

class _Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


class _TimeOut(Exception):
    pass


def _check_config(ns):
    """A parsed command's --config and key=value overrides load (unknown keys fail, as they would at run time)."""
    from mot_parallel.config import load_config
    config = getattr(ns, "config", None)
    if isinstance(config, str):
        overrides = [o for o in getattr(ns, "overrides", None) or [] if "=" in o]
        load_config(config, overrides)


def run_one(argv, timeout_s=60):
    """Parse (or, for --help/--dry-run/--check, run) one command in this process: (ok, output tail)."""
    kind, path, args = target(argv)
    parse_only = not any(a in RUN_FLAGS for a in args)
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        ns = original(self, args, namespace)
        if parse_only:
            raise _Parsed(ns)
        return ns

    def alarm(*_):
        raise _TimeOut()

    out, code = io.StringIO(), 0
    old_argv, old_path, old_handler = sys.argv, list(sys.path), signal.signal(signal.SIGALRM, alarm)
    argparse.ArgumentParser.parse_args = parse_args
    signal.alarm(timeout_s)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if kind == "module":
                sys.argv = [path] + args
                runpy.run_module(path, run_name="__main__", alter_sys=True)
            else:
                sys.argv = [path] + args
                sys.path.insert(0, os.path.dirname(os.path.join(ROOT, path)))
                runpy.run_path(os.path.join(ROOT, path), run_name="__main__")
    except _Parsed as p:
        try:
            _check_config(p.namespace)
        except Exception as e:  # noqa: BLE001 -- reported, with its type
            out.write(f"{type(e).__name__}: {e}")
            code = 1
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            out.write(e.code)
    except _TimeOut:
        out.write(f"still running after {timeout_s} s: mark the fence `bash illustrative` or make it fast")
        code = 1
    except Exception as e:  # noqa: BLE001
        out.write(f"{type(e).__name__}: {e}")
        code = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        argparse.ArgumentParser.parse_args = original
        sys.argv, sys.path[:] = old_argv, old_path
    return code == 0, out.getvalue()[-2000:]


def module_names(module):
    """The names a mot_parallel module defines or imports at top level (read, not imported: cheap), and its
    submodules; None when there is no such module."""
    base = os.path.join(ROOT, *module.split("."))
    path = base + "/__init__.py" if os.path.isdir(base) else base + ".py"
    if not os.path.isfile(path):
        return None
    names = {n[:-3] for n in os.listdir(base)} if os.path.isdir(base) else set()
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def fragment_errors(fence):
    """A python fence compiles and the mot_parallel names it imports exist; a yaml fence loads as a config."""
    if fence.lang == "python":
        try:
            tree = ast.parse(fence.body)
        except SyntaxError as e:
            return [f"SyntaxError: {e}"]
        errors = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mot_parallel":
                names = module_names(node.module)
                missing = [a.name for a in node.names if names is None or a.name not in names]
                errors += [f"{node.module} has no {name}" for name in missing]
        return errors
    if fence.lang == "yaml":
        import tempfile

        from mot_parallel.config import ConfigError, load_config
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(fence.body)
            f.flush()
            try:
                load_config(f.name)
            except ConfigError as e:
                return [str(e)]
    if fence.lang == "json":
        try:
            json.loads(fence.body)
        except ValueError as e:
            return [str(e)]
    return []


def main():
    os.chdir(ROOT)
    sys.path.insert(0, ROOT)
    results = []
    for item in json.load(open(sys.argv[1])):
        t0 = time.time()
        ok, tail = run_one(item["argv"])
        results.append({"where": item["where"], "ok": ok, "tail": tail, "seconds": round(time.time() - t0, 2)})
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
