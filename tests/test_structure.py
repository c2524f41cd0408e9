"""The module structure holds: one job per module, hooks in one place, a thin public Watcher.

Read from the source with ``ast`` (not by importing private state), so a change that breaks the
layering fails here with the file and line that did it.
"""

from __future__ import annotations

import ast
import inspect
import pathlib

import gradwatch as gw
from gradwatch.detectors.base import Detector
from gradwatch.detectors.suite import DetectorSuite

PACKAGE = pathlib.Path(gw.__file__).parent

HOOK_REGISTRATIONS = {
    "register_hook",
    "register_post_accumulate_grad_hook",
    "register_step_pre_hook",
    "register_step_post_hook",
    "register_full_backward_hook",
    "register_forward_hook",
    "register_forward_pre_hook",
    "queue_callback",
}


def _calls(path: pathlib.Path) -> list[tuple[str, int]]:
    """(called name, line) of every call in ``path``: ``f(...)`` and ``x.f(...)``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            out.append((name, node.lineno))
    return out


def _modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_hooks_and_compat_register_torch_hooks() -> None:
    # hooks.py owns every handle; compat.py holds the feature-checked engine callback
    found = [
        f"{p.relative_to(PACKAGE)}:{line} {name}"
        for p in _modules()
        if p.name not in ("hooks.py", "compat.py")
        for name, line in _calls(p)
        if name in HOOK_REGISTRATIONS
    ]
    assert found == []


def test_only_the_recorder_registers_hooks_or_receives_their_callbacks() -> None:
    importers = {
        str(p.relative_to(PACKAGE))
        for p in _modules()
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.ImportFrom) and n.module == "gradwatch.hooks"
    }
    assert importers == {"recorder.py"}
    watcher = (PACKAGE / "watcher.py").read_text()
    assert "hooks" not in {n for n, _ in _calls(PACKAGE / "watcher.py")}
    assert "HandleGroup" not in watcher and "functools.partial" not in watcher


def test_no_detector_is_given_a_callable() -> None:
    suite = ast.parse((PACKAGE / "detectors" / "suite.py").read_text())
    assert not [n.lineno for n in ast.walk(suite) if isinstance(n, ast.Lambda)]
    for cls in Detector.__subclasses__() + [c for d in Detector.__subclasses__() for c in d.__subclasses__()]:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        kinds = {str(p.annotation) for p in params}
        assert kinds <= {"WatchView", "int", "float", "bool"}, (cls.__name__, kinds)
    assert len(DetectorSuite.__init__.__code__.co_varnames) < 10  # view, config, by_layer


def test_the_watcher_is_the_public_face_only() -> None:
    tree = ast.parse((PACKAGE / "watcher.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Watcher"]
    methods = [n.name for n in cls.body if isinstance(n, ast.FunctionDef)]
    assert len(methods) <= 25, methods
    attributes = {
        t.attr
        for n in ast.walk(cls)
        if isinstance(n, (ast.Assign, ast.AnnAssign))
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
    }
    assert len(attributes) <= 15, attributes
    public = {n for n in dir(gw.Watcher) if not n.startswith("_")}
    assert public == {
        "attach",
        "attached",
        "close",
        "current_step",
        "detach",
        "findings",
        "flush",
        "history",
        "record_loss",
        "report",
        "skipped_steps",
        "step",
        "suppress",
        "train_step",
    }
    w = gw.Watcher({"w": __import__("torch").zeros(2, requires_grad=True)})
    assert {n for n in vars(w) if not n.startswith("_")} == {"config", "names", "frozen", "disabled"}


def test_import_gradwatch_imports_no_framework_and_the_plugin_imports_no_torch() -> None:
    import subprocess
    import sys

    probe = (
        "import sys; import gradwatch, gradwatch.cli, gradwatch.integrations; "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate', 'pytest', "
        "'tensorboard') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
    # the pytest plugin (loaded in every pytest session where gradwatch is installed) adds no framework
    plugin = (
        "import sys, gradwatch.pytest_plugin; "
        "print([m for m in ('lightning', 'tensorboard') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", plugin], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
