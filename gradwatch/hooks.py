"""The only module that registers torch hooks.

A :class:`HandleGroup` owns every ``RemovableHandle`` gradwatch registers, so one ``remove()`` puts the
model and the optimizers back exactly as they were found: it removes each hook, and where a tensor had
no hook dictionary before (``_post_accumulate_grad_hooks is None``), it sets it back to ``None`` so that
the tensor is indistinguishable from one that was never watched.

Hooks used (see the PyTorch docs of each):

* ``Tensor.register_post_accumulate_grad_hook`` (PyTorch >= 2.1): runs after a gradient was accumulated
  into a leaf's ``.grad``; never for ``torch.autograd.grad`` calls, which do not accumulate.
* ``Tensor.register_hook`` on the same leaves: runs just before that accumulation, while ``.grad`` still
  shows what the previous step left there (``None`` after ``zero_grad(set_to_none=True)``).
* ``Optimizer.register_step_pre_hook`` / ``register_step_post_hook``: run around ``optimizer.step()``.
* ``Variable._execution_engine.queue_callback`` (through :mod:`gradwatch.compat`): run once at the end
  of the current backward pass
  (the mechanism ``DistributedDataParallel`` uses to finish gradient reduction).
* ``GradScaler.unscale_`` (``torch.amp``): PyTorch has no hook there, so while any watcher asks for it,
  the method of each scaler class that defines it (:func:`gradwatch.compat.grad_scaler_classes`) is
  wrapped to call the watchers just before and after the original, for enabled scalers only; the
  original is put back on the class when the last watcher lets go. Nothing is stored on scaler
  instances (their pickling and ``state_dict`` are untouched).
* ``torch.nn.utils.clip_grad_norm_``, ``clip_grad_value_`` and ``clip_grads_with_norm_``: likewise, no
  hook; while any watcher asks, the module attributes (``torch.nn.utils`` and, for the first two,
  ``torch.nn.utils.clip_grad``) are wrappers that turn the ``parameters`` argument into a list once (as
  the functions do themselves), show it to the watchers, and call the original with that list. A
  function imported by name before the watcher attached is the original and is not seen.
* ``torch.autograd.backward`` (what ``Tensor.backward`` calls): likewise, no hook runs before a backward
  pass starts; while any watcher asks, the module attribute is a wrapper that shows the tensors about
  to be differentiated (the loss) to the watchers, then calls the original unchanged. The watchers read
  the loss's autograd graph there, before backward frees it (:mod:`gradwatch.forward_origin`).
  ``torch.autograd.grad`` is not wrapped.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from gradwatch import compat

__all__ = ["HandleGroup", "queue_end_of_backward"]


#: (kind, id of a tensor) -> [was its hook dictionary None before any group hooked it, groups holding it]
#: (ids, not weak references: a weak reference to a parameter makes torch.utils.swap_tensors refuse it;
#: every entry lives only while some group holds the tensor, so an id cannot be reused meanwhile)
_hooked: dict[tuple[str, int], list[Any]] = {}


def watched_elsewhere(tensor: torch.Tensor) -> bool:
    """Whether a gradwatch hook group (another watcher) already holds hooks on ``tensor``."""
    return ("post_accumulate", id(tensor)) in _hooked


class HandleGroup:
    """Owner of every hook gradwatch registers; ``remove()`` is idempotent.

    Several groups may hook the same tensor (two watchers of one model): whichever removes its hooks
    last puts ``None`` back where the tensor had no hook dictionary before the first one, in any order.
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._held: list[tuple[str, torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self._handles)

    def _hold(self, tensor: torch.Tensor, kind: str) -> None:
        entry = _hooked.get((kind, id(tensor)))
        if entry is None:
            _hooked[(kind, id(tensor))] = [compat.hook_dict(tensor, kind) is None, 1]
        else:
            entry[1] += 1
        self._held.append((kind, tensor))

    def post_accumulate_grad(self, tensor: torch.Tensor, hook: Callable[[torch.Tensor], None]) -> None:
        """Register ``hook(tensor)`` to run after each gradient accumulation into ``tensor.grad``."""
        self._hold(tensor, "post_accumulate")
        self._handles.append(tensor.register_post_accumulate_grad_hook(hook))

    def before_accumulate(self, tensor: torch.Tensor, hook: Callable[[torch.Tensor], None]) -> None:
        """Register ``hook(incoming_grad)`` to run before a gradient is accumulated into a leaf's ``.grad``.

        (``Tensor.register_hook`` on a leaf; it also runs for ``torch.autograd.grad`` calls that take the
        leaf as an input, which accumulate nothing.) The hook must return ``None``.
        """
        self._hold(tensor, "backward")
        self._handles.append(tensor.register_hook(hook))

    def around_unscale(
        self,
        before: Callable[[Any, torch.optim.Optimizer], None],
        after: Callable[[Any, torch.optim.Optimizer], None],
    ) -> None:
        """Call ``before(scaler, optimizer)``, ``after(...)`` around each enabled ``GradScaler.unscale_``."""
        handle = RemovableHandle(_unscale_calls)
        _unscale_calls[handle.id] = (before, after)
        self._handles.append(handle)
        for cls in compat.grad_scaler_classes():
            _wrap(cls, "unscale_", _unscale_spy, _unscale_originals)

    def around_clip(
        self,
        before: Callable[[str, list[Any], bool], None],
        after: Callable[[str, list[Any], Any], None],
    ) -> None:
        """Call ``before(name, params, l2)`` and ``after(name, params, result)`` around each clip call.

        ``params``: the ``parameters`` argument as a list; ``l2``: whether the norm the function clips
        against (and returns) is the L2 norm (``clip_grad_norm_``'s ``norm_type`` is 2, its default);
        ``result``: what the function returned (``clip_grads_with_norm_``: the ``total_norm`` it was given).
        """
        handle = RemovableHandle(_clip_calls)
        _clip_calls[handle.id] = (before, after)
        self._handles.append(handle)
        import torch.nn.utils.clip_grad as clip_module

        for module in (torch.nn.utils, clip_module):
            for name in _CLIP_FUNCTIONS:
                _wrap(module, name, functools.partial(_clip_spy, name), _clip_originals)

    def before_backward(self, before: Callable[[Any], None]) -> None:
        """Call ``before(tensors)`` at each ``torch.autograd.backward`` (``Tensor.backward``), before it runs.

        ``tensors``: its first argument as given (a tensor, or a sequence of tensors or gradient edges).
        """
        handle = RemovableHandle(_backward_calls)
        _backward_calls[handle.id] = before
        self._handles.append(handle)
        import torch.autograd as autograd_module

        _wrap(autograd_module, "backward", _backward_spy, _backward_originals)

    def before_zero_grad(self, before: Callable[[], None]) -> None:
        """Call ``before()`` at each ``Optimizer.zero_grad`` and ``Module.zero_grad``, before it runs.

        The base classes' own methods are wrapped (every optimizer and module that inherits them); a
        subclass that overrides ``zero_grad`` without calling the base one is not seen.
        """
        handle = RemovableHandle(_zero_grad_calls)
        _zero_grad_calls[handle.id] = before
        self._handles.append(handle)
        for cls in (torch.optim.Optimizer, torch.nn.Module):
            _wrap(cls, "zero_grad", _zero_grad_spy, _zero_grad_originals)

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        pre: Callable[[torch.optim.Optimizer, Any, Any], None],
        post: Callable[[torch.optim.Optimizer, Any, Any], None],
    ) -> None:
        """Register pre- and post-step hooks on one optimizer instance (not the global ones)."""
        self._handles.append(optimizer.register_step_pre_hook(pre))
        self._handles.append(optimizer.register_step_post_hook(post))

    def remove(self) -> None:
        """Remove every hook; tensors that had no hook dictionary get ``None`` back."""
        for handle in self._handles:
            handle.remove()
        for kind, tensor in self._held:
            entry = _hooked.get((kind, id(tensor)))
            if entry is None:
                continue
            entry[1] -= 1
            if entry[1] <= 0:  # the last group holding it: as it was before any of them
                del _hooked[(kind, id(tensor))]
                if entry[0] and not compat.hook_dict(tensor, kind):
                    compat.reset_hook_dict(tensor, kind)
        self._handles.clear()
        self._held.clear()
        # no watcher asks any more: every wrapped function as it was
        for calls, originals in (
            (_unscale_calls, _unscale_originals),
            (_clip_calls, _clip_originals),
            (_backward_calls, _backward_originals),
            (_zero_grad_calls, _zero_grad_originals),
        ):
            if not calls:
                _unwrap(originals)


_Originals = dict[tuple[Any, str], Callable[..., Any]]


def _own(owner: Any, name: str) -> Any:
    """``owner.name``; for a class, only its own attribute (not one it inherits)."""
    return owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)


def _wrap(owner: Any, name: str, spy: Callable[[Any], Any], originals: _Originals) -> None:
    """Replace ``owner.name`` by ``spy(original)`` unless already done (or absent); keep the original."""
    current = _own(owner, name)
    if current is None or (owner, name) in originals:
        return
    originals[(owner, name)] = current
    setattr(owner, name, spy(current))


def _unwrap(originals: _Originals) -> None:
    """Put each original back where the wrapper is still in place (not where someone re-wrapped it)."""
    for (owner, name), original in originals.items():
        if getattr(_own(owner, name), "__wrapped__", None) is original:
            setattr(owner, name, original)
    originals.clear()


#: handle id -> (before, after) callbacks of every watcher that asked for ``GradScaler.unscale_``
_unscale_calls: OrderedDict[int, tuple[Callable[..., None], Callable[..., None]]] = OrderedDict()
#: (scaler class, "unscale_") -> the class's own ``unscale_``, while wrapped
_unscale_originals: dict[tuple[Any, str], Callable[..., Any]] = {}


#: handle id -> callback of every watcher that asked for the clip functions
_clip_calls: OrderedDict[int, tuple[Callable[..., None], Callable[..., None]]] = OrderedDict()
#: (module, function name) -> the original function, while wrapped
_clip_originals: dict[tuple[Any, str], Callable[..., Any]] = {}
#: The clip functions watched: ``clip_grads_with_norm_`` (PyTorch 2.6+, where present) is the second half
#: of ``clip_grad_norm_``, called with a total norm from ``get_total_norm`` (as accelerate does).
_CLIP_FUNCTIONS = ("clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_")


#: handle id -> callback of every watcher that asked for ``torch.autograd.backward``
_backward_calls: OrderedDict[int, Callable[[Any], None]] = OrderedDict()
#: (torch.autograd, "backward") -> the original ``torch.autograd.backward``, while wrapped
_backward_originals: dict[tuple[Any, str], Callable[..., Any]] = {}


#: handle id -> callback of every watcher that asked for the ``zero_grad`` methods
_zero_grad_calls: OrderedDict[int, Callable[[], None]] = OrderedDict()
#: (torch.optim.Optimizer or torch.nn.Module, "zero_grad") -> the class's own method, while wrapped
_zero_grad_originals: dict[tuple[Any, str], Callable[..., Any]] = {}


def _zero_grad_spy(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)  # (sets __wrapped__ = original)
    def zero_grad(self: Any, *args: Any, **kwargs: Any) -> Any:
        for before in list(_zero_grad_calls.values()):
            before()
        return original(self, *args, **kwargs)

    return zero_grad


def _backward_spy(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)  # (sets __wrapped__ = original)
    def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        if _backward_calls:
            if isinstance(tensors, Iterator):  # (a generator: read once, here, for the watchers and torch)
                tensors = tuple(tensors)
            for before in list(_backward_calls.values()):
                before(tensors)
        if not compat.enter_backward_call():
            return original(tensors, *args, **kwargs)
        try:  # (a reentrant backward inside a running pass: its gradients are that pass's)
            return original(tensors, *args, **kwargs)
        finally:
            compat.exit_backward_call()

    return backward


def _clip_spy(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)  # (sets __wrapped__ = original)
    def clip(*args: Any, **kwargs: Any) -> Any:
        calls = list(_clip_calls.values())
        given = args[0] if args else kwargs.get("parameters")
        if not calls or given is None:
            return original(*args, **kwargs)
        params = [given] if isinstance(given, torch.Tensor) else list(given)
        l2 = True
        if name == "clip_grad_norm_":
            norm_type = args[2] if len(args) > 2 else kwargs.get("norm_type", 2.0)
            l2 = isinstance(norm_type, (int, float)) and float(norm_type) == 2.0
        for before, _ in calls:
            before(name, params, l2)
        if args:
            args = (params, *args[1:])
        else:
            kwargs["parameters"] = params
        result = original(*args, **kwargs)
        measured = result
        if name == "clip_grads_with_norm_":  # (parameters, max_norm, total_norm, ...): the norm it was given
            measured = args[2] if len(args) > 2 else kwargs.get("total_norm")
        for _, after in calls:
            after(name, params, measured)
        return result

    return clip


def _unscale_spy(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)  # (sets __wrapped__ = original)
    def unscale_(self: Any, optimizer: torch.optim.Optimizer) -> None:
        calls = list(_unscale_calls.values()) if _unscale_calls and self.is_enabled() else []
        for before, _ in calls:
            before(self, optimizer)
        original(self, optimizer)
        for _, after in calls:
            after(self, optimizer)

    return unscale_


def queue_end_of_backward(callback: Callable[[], None], at_end: bool = False) -> bool:
    """Run ``callback()`` once when the backward pass now running finishes; False if it cannot be queued.

    Must be called from inside a backward pass (e.g. from a gradient hook), or with ``at_end`` from a
    callback running at its end. See :func:`gradwatch.compat.queue_end_of_backward`.
    """
    return compat.queue_end_of_backward(callback, at_end=at_end)
