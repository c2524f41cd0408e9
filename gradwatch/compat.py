"""Feature checks for every private or recent torch API gradwatch uses, each with a tested fallback.

gradwatch supports PyTorch 2.1 and newer (``Tensor.register_post_accumulate_grad_hook``, the one hook it
cannot do without, appeared in 2.1). Everything below is either private (a leading underscore: it may
change or vanish in any release) or newer than 2.1. Each is checked once, when this module is imported
(or when :func:`refresh` is called, which the tests do after removing an attribute), and the rest of the
package calls the functions here, never the torch names directly: ``tests/test_compat.py`` scans the
package's source for private torch names and fails if one is used outside this module or has no test
of its fallback.

The table (:data:`FEATURES`) gives, per name, the first release that has it (read from the PyTorch
source and its pull requests, and checked on 2.1.2, 2.4.1 and 2.13.0) and what is used without it:

=================================================  =====  ================================================
torch name                                         since  fallback
=================================================  =====  ================================================
``torch._foreach_clone``                           2.12   ``torch.cat`` of the 1-D tensors, ``split`` back
``torch._foreach_max``                             2.4    one ``amax`` per tensor
``torch._foreach_norm(..., dtype=)``               2.4    the tensors converted to ``dtype``, then the norm
``torch._foreach_norm``                            <2.1   one ``torch.linalg.vector_norm`` per tensor
``torch._foreach_abs``, ``_sub``, ``_sub_``,       <2.1   the same method called once per tensor
``_clamp_min``, ``_clamp_min_``, ``_clamp_max_``,
``_mul_``
``torch._C._current_graph_task_id``                <2.1   -1 outside a backward pass, 0 inside one (as far
                                                          as gradwatch's own end-of-pass callbacks tell)
``Variable._execution_engine.queue_callback``      <2.1   the end of a backward pass is seen at the next
                                                          boundary (optimizer step, mark, flush, next pass)
``Tensor._post_accumulate_grad_hooks``             2.1    hook dictionaries are not reset to ``None`` on
``Tensor._backward_hooks``                         <2.1   detach (the hooks themselves are removed)
``Tensor._version``                                <2.1   0: in-place updates are not seen (steps then end
                                                          at an optimizer step, a decorated call, ``step()``)
``torch.compiler.disable``                         2.1    hooks are not wrapped (a compiled train step
                                                          then traces into gradwatch's code)
``torch._dynamo`` (looked up in ``sys.modules``)   2.0    never imported: hooks are wrapped only when an
                                                          optimizer is watched
=================================================  =====  ================================================

The fallbacks compute the same values as the torch functions they replace (the tests compare both with
the same reference); only the number of kernel launches differs.
"""

from __future__ import annotations

import functools
import operator
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "FEATURES",
    "Feature",
    "available",
    "compiler_disable",
    "dynamo_imported",
    "current_graph_task_id",
    "enter_backward_call",
    "exit_backward_call",
    "foreach_abs",
    "foreach_clamp_max_",
    "foreach_clamp_min",
    "foreach_clamp_min_",
    "foreach_clone",
    "foreach_max",
    "foreach_mul_",
    "foreach_norm",
    "foreach_sub",
    "foreach_sub_",
    "global_rank",
    "hook_dict",
    "outer_graph_task_id",
    "queue_end_of_backward",
    "refresh",
    "reset_hook_dict",
    "saved_attributes",
    "version_counter",
]

Tensors = Sequence[torch.Tensor]


@dataclass(frozen=True)
class Feature:
    """One private or recent torch API: its name as written in gradwatch's source, and when it appeared.

    Attributes:
        name: the torch name (``torch._foreach_max``; a ``Tensor`` attribute as ``Tensor._version``).
        since: the first PyTorch release that has it (``"<2.1"``: older than every supported release).
        fallback: what gradwatch does without it.
    """

    name: str
    since: str
    fallback: str


#: Every private or recent torch name gradwatch uses, keyed by that name.
FEATURES: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature("torch._foreach_clone", "2.12", "torch.cat of the 1-D tensors, split back"),
        Feature("torch._foreach_max", "2.4", "one amax per tensor"),
        Feature("torch._foreach_norm(dtype=)", "2.4", "convert to dtype first"),
        Feature("torch._foreach_norm", "<2.1", "one linalg.vector_norm per tensor"),
        Feature("torch._foreach_abs", "<2.1", "one abs per tensor"),
        Feature("torch._foreach_sub", "<2.1", "one sub per tensor"),
        Feature("torch._foreach_sub_", "<2.1", "one sub_ per tensor"),
        Feature("torch._foreach_clamp_min", "<2.1", "one clamp_min per tensor"),
        Feature("torch._foreach_clamp_min_", "<2.1", "one clamp_min_ per tensor"),
        Feature("torch._foreach_clamp_max_", "<2.1", "one clamp_max_ per tensor"),
        Feature("torch._foreach_mul_", "<2.1", "one mul_ per tensor"),
        Feature("torch._C._current_graph_task_id", "<2.1", "-1 outside a backward pass seen by gradwatch"),
        Feature("Variable._execution_engine.queue_callback", "<2.1", "end of pass seen at the next boundary"),
        Feature("Tensor._post_accumulate_grad_hooks", "2.1", "hook dictionary left empty, not None"),
        Feature("Tensor._backward_hooks", "<2.1", "hook dictionary left empty, not None"),
        Feature("Tensor._version", "<2.1", "0: in-place updates are not seen"),
        Feature(
            "Node._saved_*",
            "<2.1",
            "a NaN born in the forward pass is named at the first layer the backward pass reached",
        ),
        Feature("torch.compiler.disable", "2.1", "hooks not wrapped: a compiled step traces into them"),
        Feature(
            "torch.amp.GradScaler",
            "2.3",
            "torch.cuda.amp.GradScaler, its own class before 2.3 (clipping before unscale_ is checked "
            "for the scaler classes that define unscale_)",
        ),
        Feature(
            "torch._dynamo",
            "2.0",
            "read in sys.modules only: never imported, hooks wrapped with an optimizer",
        ),
    )
}

_available: dict[str, bool] = {}


def available(name: str) -> bool:
    """Whether this PyTorch has the feature ``name`` (a key of :data:`FEATURES`), as checked at import.

    Raises:
        KeyError: ``name`` is not in :data:`FEATURES`.
    """
    if name not in FEATURES:
        raise KeyError(f"gradwatch.compat: unknown feature {name!r}; known: {sorted(FEATURES)}")
    return _available[name]


def _tensor_has(name: str) -> bool:
    """Whether ``torch.Tensor`` has the attribute ``name`` (the tests replace this: C attributes stay)."""
    return hasattr(torch.Tensor, name)


def _probe_norm_dtype() -> bool:
    try:
        torch._foreach_norm([torch.ones(1)], 2.0, dtype=torch.float64)  # type: ignore[call-arg]
    except (TypeError, RuntimeError, AttributeError):
        return False
    return True


def _engine_queue() -> Callable[[Callable[[], None]], None] | None:
    engine = getattr(torch.autograd.Variable, "_execution_engine", None)
    return getattr(engine, "queue_callback", None)


# ------------------------------------------------------------------------------------------ fallbacks
def _clone_fallback(tensors: Tensors) -> list[torch.Tensor]:
    if all(t.dim() == 1 for t in tensors) and len({(t.device, t.dtype) for t in tensors}) == 1:
        return list(torch.cat(list(tensors)).split([t.numel() for t in tensors]))
    return [t.clone() for t in tensors]


def _max_fallback(tensors: Tensors) -> list[torch.Tensor]:
    return [t.amax() for t in tensors]


def _norm_fallback(tensors: Tensors, ord: float = 2.0) -> list[torch.Tensor]:
    return [torch.linalg.vector_norm(t, ord) for t in tensors]


def _loop(method: str, inplace: bool) -> Callable[..., Any]:
    def run(tensors: Tensors, *args: Any) -> list[torch.Tensor] | None:
        if args and isinstance(args[0], (list, tuple)):  # a second tensor list
            out = [getattr(a, method)(b, *args[1:]) for a, b in zip(tensors, args[0])]
        else:
            out = [getattr(t, method)(*args) for t in tensors]
        return None if inplace else out

    run.__name__ = f"_{method}_fallback"
    return run


def _task_fallback() -> int:
    return _fallback_task_state[0]


#: The fallback's view of the backward pass: 0 between a pass's first watched gradient and its end as
#: far as gradwatch can tell (the next boundary), -1 otherwise. Set by :func:`queue_end_of_backward`.
_fallback_task_state = [-1]


_norm: Callable[..., Sequence[torch.Tensor]] = _norm_fallback
_queue: Callable[[Callable[[], None]], None] | None = None

# ------------------------------------------------------------------------------------------ the API
#: ``torch._foreach_clone(tensors)``: copies.
foreach_clone: Callable[[Tensors], Sequence[torch.Tensor]]
#: ``torch._foreach_max(tensors)``: 0-dim maxima (NaN propagates).
foreach_max: Callable[[Tensors], Sequence[torch.Tensor]]
#: ``torch._foreach_abs(tensors)``.
foreach_abs: Callable[[Tensors], Sequence[torch.Tensor]]
#: ``torch._foreach_sub(tensors, others)``.
foreach_sub: Callable[[Tensors, Tensors], Sequence[torch.Tensor]]
#: ``torch._foreach_sub_(tensors, scalar)``.
foreach_sub_: Callable[[Tensors, float], None]
#: ``torch._foreach_clamp_min(tensors, scalar)``: clamped copies.
foreach_clamp_min: Callable[[Tensors, float], Sequence[torch.Tensor]]
#: ``torch._foreach_clamp_min_(tensors, scalar)``.
foreach_clamp_min_: Callable[[Tensors, float], None]
#: ``torch._foreach_clamp_max_(tensors, scalar)``.
foreach_clamp_max_: Callable[[Tensors, float], None]
#: ``torch._foreach_mul_(tensors, scalar)``.
foreach_mul_: Callable[[Tensors, float], None]
#: ``torch._C._current_graph_task_id()``: id of the backward pass running in this thread, else -1.
current_graph_task_id: Callable[[], int] = _task_fallback  # (set by refresh())


def foreach_norm(tensors: Tensors, ord: float = 2.0, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """``torch._foreach_norm(tensors, ord, dtype=dtype)``: one 0-dim norm per tensor.

    ``dtype``: the tensors are converted to it before the norm (``torch.linalg.vector_norm``'s meaning).
    """
    if dtype is None:
        return list(_norm(tensors, ord))
    if _available["torch._foreach_norm(dtype=)"]:
        return list(_norm(tensors, ord, dtype=dtype))
    return list(_norm([t.to(dtype) for t in tensors], ord))


def queue_end_of_backward(callback: Callable[[], None], *, at_end: bool = False) -> bool:
    """Run ``callback()`` once when the backward pass now running ends; False where it cannot be queued.

    ``Variable._execution_engine.queue_callback`` (the mechanism ``DistributedDataParallel`` uses to
    finish gradient reduction). Must be called from inside a backward pass. Without it nothing is queued
    and False is returned: the caller ends the pass at its next boundary. ``at_end``: called from a
    callback already running at the end of the pass (it then runs after every callback queued so far);
    False is returned, and nothing queued, outside a backward pass.
    """
    queue = _queue
    if at_end:
        if queue is None:
            return False
        try:
            queue(callback)
        except RuntimeError:  # "Final callbacks can only be installed during backward pass"
            return False
        return True
    _fallback_task_state[0] = 0
    if queue is None:
        return False
    if getattr(_reentrant, "depth", 0):  # inside a reentrant backward call: held for the outer pass
        _reentrant.pending.append(callback)
        return True
    queue(callback)
    return True


_reentrant = threading.local()


def enter_backward_call() -> bool:
    """A ``torch.autograd.backward`` call starts; True when it runs *inside* a backward pass.

    That is a reentrant backward: ``torch.utils.checkpoint(..., use_reentrant=True)`` recomputes its
    block during the outer pass and differentiates it with a backward call of its own, a separate graph
    task. Until the matching :func:`exit_backward_call`, :func:`outer_graph_task_id` gives the outer
    pass's id (the gradients that call accumulates are the outer pass's), and
    :func:`queue_end_of_backward` holds its callbacks until the call returns, then queues them on the
    outer pass (queued inside, they would run at the end of the inner one). Needs
    ``torch._C._current_graph_task_id`` (its fallback cannot tell): False without it.
    """
    if not _available["torch._C._current_graph_task_id"]:
        return False
    task = current_graph_task_id()
    if task == -1:
        return False
    depth = getattr(_reentrant, "depth", 0)
    if depth == 0:
        _reentrant.outer, _reentrant.pending = task, []
    _reentrant.depth = depth + 1
    return True


def exit_backward_call() -> None:
    """The reentrant backward call :func:`enter_backward_call` saw (it returned True) has returned.

    Back in the outer pass: the callbacks held meanwhile are queued on it.
    """
    _reentrant.depth -= 1
    if _reentrant.depth == 0:
        pending, _reentrant.pending = _reentrant.pending, []
        for callback in pending:
            queue_end_of_backward(callback)


def outer_graph_task_id() -> int:
    """:func:`current_graph_task_id`, or inside a reentrant backward call the outer pass's id."""
    return _reentrant.outer if getattr(_reentrant, "depth", 0) else current_graph_task_id()


def backward_seen_ended() -> None:
    """Tell the graph-task fallback that the backward pass it assumed running has ended."""
    _fallback_task_state[0] = -1


def _no_version(t: torch.Tensor) -> int:
    return 0


#: ``t._version``: incremented by every in-place write to ``t`` (autograd's correctness checks); 0 where
#: this PyTorch has no version counters (in-place updates are then not seen). An ``operator.attrgetter``
#: (a C call, no Python frame: it is read several times per parameter per step).
version_counter: Callable[[torch.Tensor], int] = _no_version


def saved_attributes(node_type: type) -> list[str]:
    """Names of the ``_saved_*`` attributes of an autograd node class (what its backward saved).

    The tensors a node keeps for its backward, as the "Saved tensors" section of PyTorch's autograd
    notes reads them (``y.grad_fn._saved_result``). Empty where this PyTorch does not expose them.
    """
    if not _available["Node._saved_*"]:
        return []
    return [a for a in dir(node_type) if a.startswith("_saved_")]


def _probe_saved() -> bool:
    x = torch.ones(1, requires_grad=True)
    return isinstance(getattr(x.exp().grad_fn, "_saved_result", None), torch.Tensor)


def hook_dict(t: torch.Tensor, kind: str) -> Any:
    """``t._post_accumulate_grad_hooks`` (``kind="post_accumulate"``) or ``t._backward_hooks`` (else).

    An empty dict where this PyTorch has no such attribute.
    """
    name = "_post_accumulate_grad_hooks" if kind == "post_accumulate" else "_backward_hooks"
    if not _available[f"Tensor.{name}"]:
        return {}
    return getattr(t, name)


def reset_hook_dict(t: torch.Tensor, kind: str) -> None:
    """Set the tensor's hook dictionary back to ``None`` (as on a tensor never hooked), where it exists."""
    name = "_post_accumulate_grad_hooks" if kind == "post_accumulate" else "_backward_hooks"
    if _available[f"Tensor.{name}"]:
        setattr(t, name, None)


def compiler_disable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped so that ``torch.compile`` runs it eagerly instead of tracing into it.

    ``torch.compiler.disable`` (public since PyTorch 2.1; ``fn`` itself where a build lacks it). Called
    from a compiled region, such a function is one graph break where it is called; not tracing it keeps
    gradwatch's own host code (numpy, Python sets) out of the user's graphs, which would otherwise break
    them at every such operation and compile gradwatch's internals.
    """
    if not _available["torch.compiler.disable"]:
        return fn
    return torch.compiler.disable(fn)  # type: ignore[no-any-return]


def dynamo_imported() -> bool:
    """Whether ``torch._dynamo`` (``torch.compile``'s tracer) has been imported in this process.

    Read from ``sys.modules`` (nothing is imported); without that module name (a build without the
    compiler) it is never imported, and gradwatch wraps its hooks only when an optimizer is watched.
    """
    return _DYNAMO_MODULE in sys.modules


#: The module ``torch.compile`` imports (see :data:`FEATURES`).
_DYNAMO_MODULE = "torch._dynamo"


def grad_scaler_classes() -> list[type]:
    """The loss-scaler classes that define ``unscale_`` themselves, among those already imported.

    ``torch.amp.GradScaler`` (PyTorch 2.3+; ``torch.cuda.amp.GradScaler`` and ``torch.cpu.amp.GradScaler``
    subclass it there), ``torch.cuda.amp.GradScaler`` where it is its own class (before 2.3), and FSDP's
    ``ShardedGradScaler`` when its module is already imported (never imported here).
    """
    found: list[Any] = []
    if _available["torch.amp.GradScaler"]:
        found.append(torch.amp.GradScaler)
    cuda_amp = getattr(getattr(torch, "cuda", None), "amp", None)
    found.append(getattr(cuda_amp, "GradScaler", None))
    sharded = sys.modules.get("torch.distributed.fsdp.sharded_grad_scaler")
    found.append(getattr(sharded, "ShardedGradScaler", None))
    return [c for c in dict.fromkeys(found) if isinstance(c, type) and "unscale_" in c.__dict__]


def global_rank() -> int:
    """This process's global rank in an initialised ``torch.distributed`` job, else 0 (public APIs)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def refresh() -> None:
    """Check every feature again and rebind the functions above (the tests call it after patching torch)."""
    mod = sys.modules[__name__]
    has = {
        "torch._foreach_clone": hasattr(torch, "_foreach_clone"),
        "torch._foreach_max": hasattr(torch, "_foreach_max"),
        "torch._foreach_norm": hasattr(torch, "_foreach_norm"),
        "torch._foreach_abs": hasattr(torch, "_foreach_abs"),
        "torch._foreach_sub": hasattr(torch, "_foreach_sub"),
        "torch._foreach_sub_": hasattr(torch, "_foreach_sub_"),
        "torch._foreach_clamp_min": hasattr(torch, "_foreach_clamp_min"),
        "torch._foreach_clamp_min_": hasattr(torch, "_foreach_clamp_min_"),
        "torch._foreach_clamp_max_": hasattr(torch, "_foreach_clamp_max_"),
        "torch._foreach_mul_": hasattr(torch, "_foreach_mul_"),
        "torch._C._current_graph_task_id": hasattr(torch._C, "_current_graph_task_id"),
        "Variable._execution_engine.queue_callback": _engine_queue() is not None,
        "Tensor._post_accumulate_grad_hooks": _tensor_has("_post_accumulate_grad_hooks"),
        "Tensor._backward_hooks": _tensor_has("_backward_hooks"),
        "Tensor._version": _tensor_has("_version"),
        "Node._saved_*": _probe_saved(),
        "torch.compiler.disable": callable(getattr(getattr(torch, "compiler", None), "disable", None)),
        "torch._dynamo": True,  # only looked up in sys.modules: nothing to check
        "torch.amp.GradScaler": isinstance(getattr(getattr(torch, "amp", None), "GradScaler", None), type),
    }
    has["torch._foreach_norm(dtype=)"] = has["torch._foreach_norm"] and _probe_norm_dtype()
    assert set(has) == set(FEATURES)
    _available.clear()
    _available.update(has)

    def pick(feature: str, attr: str, fallback: Callable[..., Any]) -> Callable[..., Any]:
        return getattr(torch, attr) if has[feature] else fallback

    mod.foreach_clone = pick("torch._foreach_clone", "_foreach_clone", _clone_fallback)  # type: ignore[attr-defined]
    mod.foreach_max = pick("torch._foreach_max", "_foreach_max", _max_fallback)  # type: ignore[attr-defined]
    mod.foreach_abs = pick("torch._foreach_abs", "_foreach_abs", _loop("abs", False))  # type: ignore[attr-defined]
    mod.foreach_sub = pick("torch._foreach_sub", "_foreach_sub", _loop("sub", False))  # type: ignore[attr-defined]
    mod.foreach_sub_ = pick("torch._foreach_sub_", "_foreach_sub_", _loop("sub_", True))  # type: ignore[attr-defined]
    mod.foreach_clamp_min = pick(  # type: ignore[attr-defined]
        "torch._foreach_clamp_min", "_foreach_clamp_min", _loop("clamp_min", False)
    )
    mod.foreach_clamp_min_ = pick(  # type: ignore[attr-defined]
        "torch._foreach_clamp_min_", "_foreach_clamp_min_", _loop("clamp_min_", True)
    )
    mod.foreach_clamp_max_ = pick(  # type: ignore[attr-defined]
        "torch._foreach_clamp_max_", "_foreach_clamp_max_", _loop("clamp_max_", True)
    )
    mod.foreach_mul_ = pick("torch._foreach_mul_", "_foreach_mul_", _loop("mul_", True))  # type: ignore[attr-defined]
    mod._norm = pick("torch._foreach_norm", "_foreach_norm", _norm_fallback)  # type: ignore[attr-defined]
    mod.current_graph_task_id = (  # type: ignore[attr-defined]
        torch._C._current_graph_task_id if has["torch._C._current_graph_task_id"] else _task_fallback
    )
    mod._queue = _engine_queue()  # type: ignore[attr-defined]
    mod.version_counter = operator.attrgetter("_version") if has["Tensor._version"] else _no_version  # type: ignore[attr-defined]
    _fallback_task_state[0] = -1
    _gpu_kernels_cache_clear()


def _gpu_kernels_cache_clear() -> None:
    """Forget the Triton check (:func:`gradwatch.stats.fused.triton_available` caches it)."""
    for fn in _cleared_on_refresh:
        fn.cache_clear()


#: ``functools.cache``-wrapped checks elsewhere that :func:`refresh` must forget.
_cleared_on_refresh: list[functools._lru_cache_wrapper[Any]] = []

refresh()
