"""Turn what the user passes to ``watch`` into named leaf parameters, and check the optimizers.

Accepted targets:

* an ``nn.Module`` instance: its ``named_parameters()`` (shared/tied parameters once, under the first
  name, exactly as PyTorch deduplicates them); the owning layer of ``"encoder.0.weight"`` is
  ``"encoder.0"`` and of a root-level parameter ``""``;
* a ``Mapping[str, Tensor]`` of leaf tensors (the tutorial's ``{"w": w, "b": b}``): names are the keys,
  each tensor is its own layer;
* any other iterable of leaf tensors (e.g. ``[w, b]`` or ``model.parameters()``): named ``"0"``, ``"1"``...

Parameters of a module with ``requires_grad=False`` (frozen) are listed in ``Targets.frozen`` and not
watched; nor are parameters on the ``meta`` device (shapes without data, such as the template module a
``torch.func`` ensemble keeps), which never get a gradient. Everything is checked here, at the API
boundary, with a message that says what was passed and what to pass instead.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Optimizers", "Targets", "resolve_optimizers", "resolve_target"]


@dataclass
class Targets:
    """Named leaf parameters to watch.

    Attributes:
        names: parameter names, in ``named_parameters()`` / mapping / iteration order.
        params: the leaf tensors, aligned with ``names`` (all ``requires_grad=True``).
        layers: owning-layer name of each parameter, aligned with ``names``.
        frozen: names of module parameters skipped because ``requires_grad`` was ``False``.
        module: the module when the target was one, else ``None``.
    """

    names: list[str]
    params: list[torch.Tensor]
    layers: list[str]
    frozen: list[str]
    module: nn.Module | None


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"Tensor(shape={tuple(obj.shape)}, dtype={obj.dtype}, requires_grad={obj.requires_grad})"
    text = repr(obj)
    return f"{type(obj).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _check_leaf(name: str, t: Any, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"{where}: {name!r} is {_describe(t)}, not a torch.Tensor; pass leaf tensors created with "
            f"requires_grad=True (or nn.Parameter)"
        )
    if t.grad_fn is not None:
        raise TypeError(
            f"{where}: {name!r} is not a leaf tensor: it is the result of an operation "
            f"(grad_fn={type(t.grad_fn).__name__}), so its .grad is never filled and updating it trains "
            f"nothing. Watch (and update) the tensor it was computed from, or create it directly as a leaf, "
            f"e.g. torch.zeros(3, 1, dtype=torch.float32, requires_grad=True)"
        )
    if not t.requires_grad and not (t.is_floating_point() or t.is_complex()):
        raise ValueError(
            f"{where}: {name!r} has dtype {t.dtype}, and only floating-point (or complex) tensors can "
            f"have gradients; create it as a float tensor, e.g. torch.zeros(..., dtype=torch.float32, "
            f"requires_grad=True)"
        )
    if not t.requires_grad:
        raise ValueError(
            f"{where}: {name!r} does not require grad ({_describe(t)}), so it can never get a gradient; "
            f"create it with requires_grad=True or call {name}.requires_grad_() before watching it"
        )
    return t


def resolve_target(target: Any) -> Targets:
    """Resolve ``target`` into :class:`Targets`.

    Raises:
        TypeError: a class instead of an instance, a non-tensor, a non-leaf tensor, a bare tensor, a
            string, or an object that is none of the accepted kinds.
        ValueError: an empty target, a tensor that does not require grad, or a module with no
            parameter that requires grad.
    """
    if inspect.isclass(target):
        raise TypeError(
            f"watch() got the class {target.__module__}.{target.__qualname__}, not an instance; "
            f"pass the model object, e.g. model = {target.__qualname__}(...); gradwatch.watch(model, ...)"
        )
    if isinstance(target, nn.Module):
        names: list[str] = []
        params: list[torch.Tensor] = []
        layers: list[str] = []
        frozen: list[str] = []
        for name, p in target.named_parameters():
            if not p.requires_grad:
                frozen.append(name)
                continue
            if p.is_meta:  # a shape without data (a torch.func template kept as a submodule): no gradient
                continue
            names.append(name)
            params.append(p)
            layers.append(name.rpartition(".")[0])
        if not names:
            if frozen:
                raise ValueError(
                    f"watch(): every parameter of {type(target).__name__} has requires_grad=False "
                    f"({len(frozen)} frozen), so there is no gradient to watch; unfreeze the layers you "
                    f"train (module.requires_grad_(True)) before attaching"
                )
            raise ValueError(
                f"watch(): {type(target).__name__} has no parameters; pass the module that holds the "
                f"trainable layers (or a dict of leaf tensors)"
            )
        return Targets(names, params, layers, frozen, target)
    if isinstance(target, torch.optim.Optimizer):
        raise TypeError(
            f"watch() got the optimizer {type(target).__name__} as its target; the model comes first: "
            f"gradwatch.watch(model, optimizer)"
        )
    if isinstance(target, torch.Tensor):
        raise TypeError(
            f"watch() got a single tensor ({_describe(target)}); pass a mapping of named leaf tensors such "
            f"as {{'w': w}} or a list [w]"
        )
    if isinstance(target, (str, bytes)):
        raise TypeError(
            f"watch() got the string {target!r}; pass an nn.Module, a dict of leaf tensors or a list"
        )
    items: list[tuple[str, Any]]
    if isinstance(target, Mapping):
        items = []
        for key, value in target.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"watch(): mapping keys must be parameter names (str), got {type(key).__name__} {key!r}"
                )
            items.append((key, value))
        where = "watch() mapping"
    elif isinstance(target, Iterable):
        raw = list(target)
        named = raw and all(
            isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str) and isinstance(t[1], torch.Tensor)
            for t in raw
        )
        # model.named_parameters() (name, tensor) pairs keep their names; plain tensors are numbered
        items = list(raw) if named else [(str(i), t) for i, t in enumerate(raw)]
        where = "watch() iterable"
    else:
        raise TypeError(
            f"watch() cannot watch {_describe(target)}; pass an nn.Module, a Mapping[str, Tensor] of leaf "
            f"tensors such as {{'w': w, 'b': b}}, or an iterable of leaf tensors"
        )
    if not items:
        raise ValueError(f"{where} is empty: there is nothing to watch; pass at least one leaf tensor")
    names = []
    params = []
    seen: set[int] = set()
    for name, t in items:
        t = _check_leaf(name, t, where)
        if id(t) in seen:  # the same tensor twice: keep the first name, as named_parameters() does
            continue
        seen.add(id(t))
        names.append(name)
        params.append(t)
    return Targets(names, params, list(names), [], None)


def resolve_optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    """Normalise the ``optimizer`` argument to a list (possibly empty).

    A wrapper that is an ``Optimizer`` and steps the optimizer it holds as ``.optimizer`` (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``) is replaced by that inner optimizer:
    its ``step()`` is the one whose hooks run.

    Raises:
        TypeError: a class instead of an instance, an LR scheduler, or anything else that is not a
            ``torch.optim.Optimizer`` (or a sequence of them).
    """
    if optimizer is None:
        return []
    if isinstance(optimizer, torch.optim.Optimizer):
        return _one_optimizer(optimizer, "optimizer")
    if isinstance(optimizer, Sequence) and not isinstance(optimizer, (str, bytes)):
        out: list[torch.optim.Optimizer] = []
        for i, opt in enumerate(optimizer):
            out.extend(_one_optimizer(opt, f"optimizer[{i}]"))
        return list(dict.fromkeys(out))  # the same optimizer twice counts once
    return _one_optimizer(optimizer, "optimizer")


def _one_optimizer(opt: Any, where: str) -> list[torch.optim.Optimizer]:
    if isinstance(opt, torch.optim.Optimizer):
        # a wrapper that is an Optimizer itself and steps the one it holds (accelerate's
        # AcceleratedOptimizer, Lightning's LightningOptimizer): its step hooks are the inner one's
        inner = getattr(opt, "optimizer", None)
        while isinstance(inner, torch.optim.Optimizer) and inner is not opt:
            opt, inner = inner, getattr(inner, "optimizer", None)
        return [opt]
    if inspect.isclass(opt):
        raise TypeError(
            f"{where} is the class {opt.__qualname__}, not an instance; pass the optimizer object, e.g. "
            f"{opt.__qualname__}(model.parameters(), lr=...)"
        )
    if hasattr(opt, "optimizer") and isinstance(opt.optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"{where} is {type(opt).__name__}, which wraps an optimizer (an LR scheduler?); pass the "
            f"optimizer itself: watch(model, sched.optimizer) or watch(model, optimizer)"
        )
    raise TypeError(
        f"{where} must be a torch.optim.Optimizer, a list of them, or None; got {_describe(opt)}. "
        f"Without an optimizer, mark steps with the watcher's train_step decorator or its step(), or let "
        f"gradwatch see the in-place updates of your parameters"
    )


class Optimizers:
    """The watched optimizers (held weakly) and which watched parameters each one holds.

    Args:
        optimizers: what :func:`resolve_optimizers` returned.
        n: number of watched parameters.

    Ownership is read from each optimizer's ``param_groups`` and cached per optimizer while its
    parameter count stays the same (``add_param_group`` changes it). Host-only; reads no tensor value.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], n: int) -> None:
        self._refs = [weakref.ref(o) for o in optimizers]
        many = len(self._refs) > 1
        self._names = {
            id(o): f"{type(o).__name__}#{k}" if many else type(o).__name__ for k, o in enumerate(optimizers)
        }
        self._n = n
        self._index: dict[int, int] = {}
        self._owned: dict[int, list[int]] = {}
        self._owned_key: dict[int, int] = {}
        #: positions of the watched parameters no watched optimizer holds (as last computed)
        self.unowned: list[int] = list(range(n))

    def __len__(self) -> int:
        return len(self._refs)

    def __iter__(self) -> Iterator[torch.optim.Optimizer]:
        """The optimizers still alive."""
        return (o for o in (r() for r in self._refs) if o is not None)

    def name(self, optimizer: object) -> str:
        """``"SGD"``, or ``"SGD#1"`` (its position) when several optimizers are watched."""
        return self._names.get(id(optimizer), type(optimizer).__name__)

    def names(self) -> list[str]:
        """Names of every watched optimizer, in the order given."""
        return list(self._names.values())

    def bind(self, params: Sequence[torch.Tensor]) -> None:
        """Read ownership against these parameter objects (the watched ones, at attach)."""
        self._index = {id(p): i for i, p in enumerate(params)}
        self._owned_key.clear()
        self.refresh()

    def owned_by(self, optimizer: torch.optim.Optimizer) -> list[int]:
        """Positions of the watched parameters ``optimizer`` holds, in its ``param_groups`` order."""
        key = sum(len(g["params"]) for g in optimizer.param_groups)
        if self._owned_key.get(id(optimizer)) != key:
            seen: dict[int, None] = {}
            for group in optimizer.param_groups:
                for p in group["params"]:
                    i = self._index.get(id(p))
                    if i is not None:
                        seen[i] = None
            self._owned[id(optimizer)] = list(seen)
            self._owned_key[id(optimizer)] = key
            self.refresh()
        return self._owned[id(optimizer)]

    def refresh(self) -> None:
        """Recompute :attr:`unowned`."""
        owned_any: set[int] = set()
        for opt in self:
            if self._owned_key.get(id(opt)) is None:
                self.owned_by(opt)  # (calls refresh again once known)
            owned_any.update(self._owned.get(id(opt), ()))
        self.unowned = [i for i in range(self._n) if i not in owned_any]

    def positions(self) -> dict[str, list[int]]:
        """Optimizer name -> positions of the watched parameters it holds (alive optimizers only)."""
        return {self.name(opt): self.owned_by(opt) for opt in self}

    def holder(self, t: torch.Tensor) -> str | None:
        """Name of the watched optimizer whose ``param_groups`` hold ``t`` (by identity), or ``None``."""
        for opt in self:
            if any(p is t for group in opt.param_groups for p in group["params"]):
                return self.name(opt)
        return None

    def position_lists(self) -> set[tuple[int, ...]]:
        """Every position list in use: one per optimizer, and the unowned one (as last computed)."""
        return {tuple(self.unowned), *(tuple(owned) for owned in self._owned.values())}

    def learning_rates(self) -> dict[int, float]:
        """Position -> learning rate of its param group (``group["lr"]``), where it is a host number.

        A tensor learning rate on an accelerator is left out: reading it would wait for the device.
        """
        lrs: dict[int, float] = {}
        for opt in self:
            for group in opt.param_groups:
                lr = group.get("lr")
                if isinstance(lr, torch.Tensor):
                    if lr.device.type != "cpu":
                        continue  # reading it would sync with the device
                    lr = float(lr)
                if not isinstance(lr, (int, float)):
                    continue
                for p in group["params"]:
                    i = self._index.get(id(p))
                    if i is not None:
                        lrs[i] = float(lr)
        return lrs
