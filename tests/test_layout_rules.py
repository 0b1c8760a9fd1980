"""Where things live and how long they are: the rules of issue 18, checked on the source.

- train.py tells the story in under 500 lines;
- checkpoint file names (`G_<step>.pth`, `D_<step>.pth`) are spelled only in
  the checkpoint package;
- no function is longer than 60 lines, but the few named below, each a flat
  list with a comment saying why;
- the benchmark imports nothing from the tests (it makes its own data).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("bench", "checkpoint", "cluster", "core", "demo", "inference", "modules",
                  "preprocessing")
MAX_FUNCTION_LINES = 60
# (file, qualified name) of the functions allowed to be longer, each preceded by a
# comment saying why it reads best in one piece.
LONG_FUNCTIONS = {
    ("models.py", "SynthesizerTrn.__init__"),
    ("inference_main.py", "build_parser"),
}
# `G_` or `D_` followed by a step, a wildcard or a placeholder: a checkpoint file name.
CHECKPOINT_NAME = re.compile(r"(?<![A-Za-z0-9_])([GD]|\[GD\])_(?=$|\d|\*|\{|<|\[)")


def source_files() -> Iterator[Path]:
    """Every project source file outside tests/: the entry points and the packages."""
    yield from sorted(REPO.glob("*.py"))
    for folder in SOURCE_FOLDERS:
        yield from sorted((REPO / folder).rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef]]:
    """(qualified name, node) of every function, methods as Class.method."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _length(node: ast.FunctionDef) -> int:
    """Lines from the first decorator to the end, docstring included."""
    start = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
    return node.end_lineno - start + 1


def _docstring_ids(tree: ast.AST) -> set[int]:
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def test_train_py_tells_the_story_in_under_500_lines() -> None:
    # Fails until the lead's split of train.py (issue 18) lands; deliberately not xfailed.
    lines = (REPO / "train.py").read_text(encoding="utf-8").count("\n")
    assert lines < 500, f"train.py has {lines} lines; move machinery into core/ and checkpoint/"


def test_checkpoint_file_names_are_spelled_in_the_checkpoint_package_only() -> None:
    spelled = []
    for path in source_files():
        if _relative(path).startswith("checkpoint/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstring_ids(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and CHECKPOINT_NAME.search(node.value)
            ):
                spelled.append(f"{_relative(path)}:{node.lineno} {node.value!r}")
    assert not spelled, "use checkpoint.names instead of spelling: " + "; ".join(spelled)


def test_the_name_rule_sees_what_it_must() -> None:
    for text in ("G_*.pth", "D_", "logs/G_800.pth", "G_{step}.pth", "G_<step>.pth", "[GD]_*"):
        assert CHECKPOINT_NAME.search(text), text
    for text in ("SIGTERM_", "LOG_STEP", "a D_x name", "GD_3"):
        assert not CHECKPOINT_NAME.search(text), text


def test_no_function_over_60_lines_but_the_named_flat_lists() -> None:
    too_long, seen = [], set()
    for path in source_files():
        relative = _relative(path)
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for name, node in _functions(ast.parse(source)):
            length = _length(node)
            if length <= MAX_FUNCTION_LINES:
                continue
            if (relative, name) not in LONG_FUNCTIONS:
                too_long.append(f"{relative}:{node.lineno} {name} ({length} lines)")
                continue
            seen.add((relative, name))
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            assert lines[first - 2].strip().startswith("#"), f"{relative} {name}: say why"
    assert not too_long, "split into named steps: " + "; ".join(too_long)
    assert seen == LONG_FUNCTIONS, f"no longer long, drop them: {LONG_FUNCTIONS - seen}"
    assert len(LONG_FUNCTIONS) <= 4


def test_the_benchmark_imports_nothing_from_the_tests() -> None:
    for path in sorted((REPO / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] != "tests", f"{_relative(path)} imports {module}"


def test_entry_points_at_the_top_instrumentation_in_bench() -> None:
    assert (REPO / "launch.py").is_file() and not (REPO / "core" / "launch.py").exists()
    assert (REPO / "bench" / "host_reads.py").is_file()
    assert not (REPO / "core" / "host_reads.py").exists()
