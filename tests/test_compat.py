"""Every private or recent torch API goes through gradwatch.compat, and every fallback is tested.

Each fallback test removes (or breaks) the torch attribute, re-runs the feature checks
(``compat.refresh()``), and compares what gradwatch computes with the same float64 reference as the main
path. ``test_every_private_name_has_a_fallback_test`` scans the package source and fails on a private
torch name used outside compat.py, or listed there without a test here.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import assert_stats_close, reference_stats
from torch import nn

import gradwatch as gw
from gradwatch import compat

PACKAGE = Path(gw.__file__).resolve().parent

#: Attributes that are private torch API wherever they are read (on tensors, Variable, ...).
PRIVATE_ATTRS = {"_version", "_post_accumulate_grad_hooks", "_backward_hooks", "_execution_engine"}


@pytest.fixture(autouse=True)
def _restore_features(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield
    monkeypatch.undo()
    compat.refresh()


def _private_uses(path: Path) -> set[str]:
    """Dotted private torch names read in ``path`` (code only, not strings or comments)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        parts = [node.attr]
        base = node.value
        while isinstance(base, ast.Attribute):
            parts.append(base.attr)
            base = base.value
        if isinstance(base, ast.Name):
            parts.append(base.id)
        dotted = list(reversed(parts))
        if dotted[0] == "torch" and any(p.startswith("_") and not p.endswith("__") for p in dotted[1:]):
            found.add(".".join(dotted))
        elif node.attr in PRIVATE_ATTRS:
            found.add(node.attr)
    return found


def _loop(
    model: nn.Module, opt: torch.optim.Optimizer, steps: int = 4, zero: bool = True, **kw
) -> gw.Watcher:
    torch.manual_seed(1)
    xs = [torch.randn(8, 6) for _ in range(steps)]
    refs = []
    with gw.watch(model, opt, on_finding="ignore", **kw) as w:
        for x in xs:
            if zero:
                opt.zero_grad()
            model(x).pow(2).mean().backward()
            refs.append({n: p.grad.clone() for n, p in model.named_parameters()})
            opt.step()
    w._refs = refs  # type: ignore[attr-defined]
    return w


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.Linear(3, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _check_norms(w: gw.Watcher) -> None:
    assert [r.step for r in w.history] == list(range(len(w._refs)))  # type: ignore[attr-defined]
    for record, grads in zip(w.history, w._refs):  # type: ignore[attr-defined]
        for name, g in grads.items():
            want = g.double().norm().item()
            assert record.params[name].grad_norm == pytest.approx(want, rel=1e-6), name


class _Checkpointed(nn.Module):
    """``_model()``'s layers with the middle one under reentrant activation checkpointing."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(6, 5), nn.Sequential(nn.Tanh(), nn.Linear(5, 3)), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        return self.c(checkpoint(self.b, self.a(x), use_reentrant=True))


def _check_reentrant_checkpoint() -> None:
    """A backward call inside the pass (reentrant checkpoint): recorded right, nothing reported."""
    model = _Checkpointed()
    w = _loop(model, torch.optim.SGD(model.parameters(), lr=0.1))
    _check_norms(w)
    assert w.findings == []


def _some_tensors() -> list[torch.Tensor]:
    torch.manual_seed(3)
    return [torch.randn(7), torch.randn(3, 4) * 1e-3, torch.tensor([0.0, -2.5, 1.0]), torch.randn(1)]


# ------------------------------------------------------------------------------ one test per fallback
def fallback_foreach_clone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "_foreach_clone", raising=False)
    compat.refresh()
    assert not compat.available("torch._foreach_clone")
    xs = [t.reshape(-1) for t in _some_tensors()]
    out = compat.foreach_clone(xs)
    for a, b in zip(out, xs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()  # copies
    # and the update ratios it serves (sampled copies of weights before the update), end to end
    model, opt = _model()
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    torch.manual_seed(1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        opt.zero_grad()
        grads = None
        model(torch.randn(8, 6)).pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
    for name, p in model.named_parameters():
        ref = reference_stats(grads[name], before[name], p)
        assert_stats_close(w.history[0].params[name], ref, rtol=1e-6, what=name)


def fallback_foreach_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "_foreach_max", raising=False)
    compat.refresh()
    assert not compat.available("torch._foreach_max")
    xs = _some_tensors()
    got = torch.stack(list(compat.foreach_max([t.abs() for t in xs])))
    want = torch.tensor([t.double().abs().max().item() for t in xs], dtype=got.dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def fallback_foreach_norm_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch._foreach_norm

    def without_dtype(tensors, ord=2, **kw):  # as on torch 2.1-2.3
        if kw:
            raise TypeError("_foreach_norm() got an unexpected keyword argument 'dtype'")
        return real(tensors, ord)

    monkeypatch.setattr(torch, "_foreach_norm", without_dtype)
    compat.refresh()
    assert not compat.available("torch._foreach_norm(dtype=)")
    xs = [torch.full((1000,), 1e-30), torch.full((10,), 3e30)]  # squares underflow / overflow float32
    got = torch.stack(compat.foreach_norm(xs, 2, dtype=torch.float64))
    want = torch.tensor([x.double().norm().item() for x in xs], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert got.dtype == torch.float64


def fallback_foreach_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "_foreach_norm")
    compat.refresh()
    assert not compat.available("torch._foreach_norm")
    xs = _some_tensors()
    for ord in (0, 1, 2):
        got = torch.stack(compat.foreach_norm(xs, ord)).double()
        want = torch.tensor(
            [torch.linalg.vector_norm(x.double(), ord).item() for x in xs], dtype=torch.float64
        )
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    got = torch.stack(compat.foreach_norm(xs, 2, dtype=torch.float64))
    assert got.dtype == torch.float64
    # the statistics engine on top of it, against the float64 reference
    _check_norms(_loop(*_model()))


def _elementwise(monkeypatch: pytest.MonkeyPatch, name: str, call: Callable, ref: Callable) -> None:
    monkeypatch.delattr(torch, name)
    compat.refresh()
    assert not compat.available(f"torch.{name}")
    xs = [t.clone() for t in _some_tensors()]
    out = call(xs)
    got = xs if out is None else list(out)
    for g, t in zip(got, _some_tensors()):
        torch.testing.assert_close(g, ref(t), rtol=0, atol=0)


def fallback_foreach_abs(monkeypatch: pytest.MonkeyPatch) -> None:
    _elementwise(monkeypatch, "_foreach_abs", lambda xs: compat.foreach_abs(xs), torch.abs)


def fallback_foreach_sub(monkeypatch: pytest.MonkeyPatch) -> None:
    others = [torch.ones_like(t) for t in _some_tensors()]
    _elementwise(monkeypatch, "_foreach_sub", lambda xs: compat.foreach_sub(xs, others), lambda t: t - 1)


def fallback_foreach_sub_(monkeypatch: pytest.MonkeyPatch) -> None:
    _elementwise(monkeypatch, "_foreach_sub_", lambda xs: compat.foreach_sub_(xs, 0.5), lambda t: t - 0.5)


def fallback_foreach_clamp_min(monkeypatch: pytest.MonkeyPatch) -> None:
    _elementwise(
        monkeypatch,
        "_foreach_clamp_min",
        lambda xs: compat.foreach_clamp_min(xs, 0.0),
        lambda t: t.clamp_min(0),
    )
    # the foreach statistics path that uses it (sum = 2 sum(g+) - sum|g|), against float64 sums
    from gradwatch.stats import batched

    g = _some_tensors()
    raw = batched._device_chunk(g)
    want = torch.tensor([t.double().sum().item() for t in g], dtype=torch.float64)
    torch.testing.assert_close(raw[:, 2], want, rtol=1e-6, atol=1e-9)


def fallback_foreach_clamp_min_(monkeypatch: pytest.MonkeyPatch) -> None:
    _elementwise(
        monkeypatch,
        "_foreach_clamp_min_",
        lambda xs: compat.foreach_clamp_min_(xs, 0.0),
        lambda t: t.clamp_min(0),
    )


def fallback_foreach_clamp_max_(monkeypatch: pytest.MonkeyPatch) -> None:
    _elementwise(
        monkeypatch,
        "_foreach_clamp_max_",
        lambda xs: compat.foreach_clamp_max_(xs, 0.1),
        lambda t: t.clamp_max(0.1),
    )


def fallback_foreach_mul_(monkeypatch: pytest.MonkeyPatch) -> None:
    _elementwise(monkeypatch, "_foreach_mul_", lambda xs: compat.foreach_mul_(xs, 3.0), lambda t: t * 3.0)


def _nonfinite_counts_match() -> None:
    """The NaN/Inf counting path (abs, sub_, clamp_min_, clamp_max_, mul_, norm 0) against the reference."""
    from gradwatch.stats import batched

    g = [
        torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0]),
        torch.tensor([2.0, float("nan")]),
    ]
    counts = batched._nonfinite_counts(g)
    torch.testing.assert_close(counts, torch.tensor([[3.0, 1.0], [1.0, 1.0]], dtype=torch.float64))


def fallback_graph_task_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch._C, "_current_graph_task_id")
    compat.refresh()
    assert not compat.available("torch._C._current_graph_task_id")
    _check_norms(_loop(*_model()))
    w = _loop(*_model(), zero=False)  # the forgotten zero_grad is still found
    assert "missing_zero_grad" in {f.kind for f in w.findings}
    assert not compat.enter_backward_call()  # (reentrant calls are not told apart: not needed either)
    _check_reentrant_checkpoint()


def test_a_reentrant_checkpoint_is_one_backward_pass() -> None:
    _check_reentrant_checkpoint()
    model = _Checkpointed()
    with gw.watch(model, on_finding="ignore") as w:
        for _ in range(3):
            model(torch.randn(4, 6)).sum().backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
    assert w._recorder.provenance.pass_id == 3 and len(w.history) == 3 and w.findings == []


def fallback_queue_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.autograd.Variable._execution_engine

    class EngineWithoutQueue:  # torch runs backward through it; it has no queue_callback
        def __getattr__(self, name: str):
            if name == "queue_callback":
                raise AttributeError(name)
            return getattr(real, name)

    monkeypatch.setattr(torch.autograd.Variable, "_execution_engine", EngineWithoutQueue())
    compat.refresh()
    assert not compat.available("Variable._execution_engine.queue_callback")
    _check_norms(_loop(*_model()))
    w = _loop(*_model(), zero=False)
    assert "missing_zero_grad" in {f.kind for f in w.findings}
    _check_reentrant_checkpoint()
    # without an optimizer: plain gradient descent, steps marked by the user (the pass's end is seen at
    # the mark, so the gradients are read there: before they are reset)
    torch.manual_seed(0)
    p = torch.randn(5, requires_grad=True)
    grads = []
    with gw.watch({"p": p}, on_finding="ignore") as w2:
        for _ in range(3):
            (p * torch.arange(5.0)).pow(2).sum().backward()
            grads.append(p.grad.clone())
            with torch.no_grad():
                p -= 0.01 * p.grad
            w2.step()
            p.grad = None
    assert [r.params["p"].grad_norm for r in w2.history] == pytest.approx([g.norm().item() for g in grads])


def _tensor_attr_missing(monkeypatch: pytest.MonkeyPatch, attr: str) -> None:
    real = compat._tensor_has
    monkeypatch.setattr(compat, "_tensor_has", lambda name: name != attr and real(name))
    compat.refresh()
    assert not compat.available(f"Tensor.{attr}")


def fallback_post_accumulate_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    _tensor_attr_missing(monkeypatch, "_post_accumulate_grad_hooks")
    model, opt = _model()
    w = _loop(model, opt)
    _check_norms(w)
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())  # hooks removed


def fallback_backward_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    _tensor_attr_missing(monkeypatch, "_backward_hooks")
    model, opt = _model()
    w = _loop(model, opt)
    _check_norms(w)
    assert all(not p._backward_hooks for p in model.parameters())


def fallback_version(monkeypatch: pytest.MonkeyPatch) -> None:
    _tensor_attr_missing(monkeypatch, "_version")
    assert compat.version_counter(torch.ones(2).add_(1)) == 0
    _check_norms(_loop(*_model()))
    w = _loop(*_model(), zero=False)
    assert "missing_zero_grad" in {f.kind for f in w.findings}


def _hooks_of(w: gw.Watcher) -> list[Callable]:
    """The functions gradwatch registered on the watched parameters (their partials' targets)."""
    params = w._recorder.params or []
    return [h.func for p in params for h in p._post_accumulate_grad_hooks.values()]


def fallback_compiler_disable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.compiler, "disable")
    compat.refresh()
    assert compat.compiler_disable(_model) is _model  # not wrapped
    model, opt = _model()
    w = gw.Watcher(model, opt).attach()
    assert not any(getattr(f, "_torchdynamo_disable", False) for f in _hooks_of(w))
    w.close()
    _check_norms(_loop(*_model()))


def fallback_dynamo_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # where the compiler's module is not loaded (a build without it, or not imported yet), nothing
    # imports it and a loop without an optimizer gets its hooks unwrapped; with an optimizer they are
    monkeypatch.setattr(compat, "_DYNAMO_MODULE", "torch._no_such_compiler")
    assert compat.dynamo_imported() is False
    plain = gw.Watcher({"w": torch.zeros(3, requires_grad=True)}).attach()
    assert not any(getattr(f, "_torchdynamo_disable", False) for f in _hooks_of(plain))
    plain.close()
    model, opt = _model()
    wrapped = gw.Watcher(model, opt).attach()
    assert all(getattr(f, "_torchdynamo_disable", False) for f in _hooks_of(wrapped))
    wrapped.close()
    _check_norms(_loop(*_model()))


def fallback_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    # before 2.3 there is no torch.amp.GradScaler, and torch.cuda.amp.GradScaler is its own class: the
    # check runs around that class's unscale_ (here a stand-in with the same protocol)
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)
    compat.refresh()
    assert compat.grad_scaler_classes() == []  # (2.13's torch.cuda.amp.GradScaler only subclasses it)

    class OldScaler:
        def is_enabled(self) -> bool:
            return True

        def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad.mul_(0.5)

    monkeypatch.setattr(torch.cuda.amp, "GradScaler", OldScaler)
    assert compat.grad_scaler_classes() == [OldScaler]
    original = OldScaler.__dict__["unscale_"]
    model, opt = _model()
    scaler = OldScaler()
    with gw.watch(model, opt, on_finding="ignore") as w:
        for step in range(2):
            opt.zero_grad()
            model(torch.ones(2, 6)).pow(2).mean().backward()
            if step == 1:  # clipped before unscale_
                nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            scaler.unscale_(opt)
            opt.step()
    assert [(f.kind, f.step) for f in w.findings] == [("clip_before_unscale", 1)]
    assert OldScaler.__dict__["unscale_"] is original  # put back at close
    _check_norms(_loop(*_model()))


def _exp_overflow_loop() -> gw.Watcher:
    """Step 1 overflows an exp to Inf in the forward pass, after layer 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for step in range(2):
            opt.zero_grad()
            h = model[0](torch.ones(3, 6))
            if step == 1:
                h = torch.exp(h * 1e3)
            model[1](h).sum().backward()
            opt.step()
    return w


def fallback_saved_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    # without the nodes' saved tensors an Inf born in the forward pass cannot be placed: the gradients'
    # backward order names the layer after it, as before the graph walk existed
    monkeypatch.setattr(compat, "_probe_saved", lambda: False)
    compat.refresh()
    assert compat.saved_attributes(type(torch.ones(1, requires_grad=True).exp().grad_fn)) == []
    w = _exp_overflow_loop()
    (f,) = w.findings
    assert f.kind == "nonfinite_grad" and f.step == 1 and f.params == ("1.weight",)
    assert "layer 1's backward" in f.message  # (the gradients alone: wrong about where, right about which)
    assert w.history[1].forward_origin is None
    monkeypatch.undo()
    compat.refresh()  # with them: the same loop names the layer the exp reads
    assert [(f.step, f.params) for f in _exp_overflow_loop().findings] == [(1, ("0.weight", "0.bias"))]


#: Feature name (a key of compat.FEATURES) -> the test of its fallback.
FALLBACK_TESTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "torch._foreach_clone": fallback_foreach_clone,
    "torch._foreach_max": fallback_foreach_max,
    "torch._foreach_norm(dtype=)": fallback_foreach_norm_dtype,
    "torch._foreach_norm": fallback_foreach_norm,
    "torch._foreach_abs": fallback_foreach_abs,
    "torch._foreach_sub": fallback_foreach_sub,
    "torch._foreach_sub_": fallback_foreach_sub_,
    "torch._foreach_clamp_min": fallback_foreach_clamp_min,
    "torch._foreach_clamp_min_": fallback_foreach_clamp_min_,
    "torch._foreach_clamp_max_": fallback_foreach_clamp_max_,
    "torch._foreach_mul_": fallback_foreach_mul_,
    "torch._C._current_graph_task_id": fallback_graph_task_id,
    "Variable._execution_engine.queue_callback": fallback_queue_callback,
    "Tensor._post_accumulate_grad_hooks": fallback_post_accumulate_hooks,
    "Tensor._backward_hooks": fallback_backward_hooks,
    "Tensor._version": fallback_version,
    "torch.compiler.disable": fallback_compiler_disable,
    "torch._dynamo": fallback_dynamo_module,
    "torch.amp.GradScaler": fallback_grad_scaler,
    "Node._saved_*": fallback_saved_tensors,
}


@pytest.mark.parametrize("feature", sorted(FALLBACK_TESTS))
def test_fallback(feature: str, monkeypatch: pytest.MonkeyPatch) -> None:
    FALLBACK_TESTS[feature](monkeypatch)
    if feature.startswith("torch._foreach"):
        _nonfinite_counts_match()


def test_every_private_name_has_a_fallback_test() -> None:
    outside = {
        str(path.relative_to(PACKAGE)): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "compat.py" and (uses := _private_uses(path))
    }
    assert not outside, f"private torch names used outside gradwatch/compat.py: {outside}"
    used = _private_uses(PACKAGE / "compat.py")
    for name in used:
        short = name.removeprefix("torch.")
        assert any(short.split(".")[-1] in key for key in compat.FEATURES), (
            f"{name} is not in compat.FEATURES"
        )
    assert set(compat.FEATURES) == set(FALLBACK_TESTS), "a feature without a fallback test, or a stale test"
    # names compat checks by string (hasattr(torch, "_foreach_...")) are features too
    text = (PACKAGE / "compat.py").read_text()
    import re

    for name in set(re.findall(r'"(_foreach_\w+)"', text)):
        assert any(name in key for key in compat.FEATURES), name


def test_everything_missing_at_once_gives_the_main_path_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """All fallbacks together (as on the oldest torch and beyond): the same records as the main path."""
    main = _loop(*_model(), steps=5)
    for name in ("_foreach_clone", "_foreach_max", "_foreach_norm", "_foreach_abs", "_foreach_sub"):
        monkeypatch.delattr(torch, name, raising=False)  # (older torch lacks the newer ones)
    for name in (
        "_foreach_sub_",
        "_foreach_clamp_min",
        "_foreach_clamp_min_",
        "_foreach_clamp_max_",
        "_foreach_mul_",
    ):
        monkeypatch.delattr(torch, name)
    monkeypatch.delattr(torch._C, "_current_graph_task_id")
    compat.refresh()
    fallback = _loop(*_model(), steps=5)
    _check_norms(fallback)
    for a, b in zip(main.history, fallback.history):
        for name in a.params:
            pa, pb = a.params[name], b.params[name]
            for field in (
                "grad_norm",
                "grad_max_abs",
                "grad_mean",
                "grad_std",
                "zero_fraction",
                "update_ratio",
            ):
                va, vb = getattr(pa, field), getattr(pb, field)
                assert vb == pytest.approx(va, rel=1e-9, abs=1e-30) or (math.isnan(va) and math.isnan(vb)), (
                    field
                )
    assert [f.kind for f in main.findings] == [f.kind for f in fallback.findings]


def test_unknown_feature_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="unknown feature"):
        compat.available("torch._nope")
