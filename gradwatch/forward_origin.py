"""Where a non-finite loss was born in the forward pass: a walk of its autograd graph before backward.

A NaN or Inf born in the forward pass (a softmax over a row masked entirely with ``-inf``, ``exp`` of
an unbounded log-variance, NaN in the batch itself) reaches the loss and, in the backward pass, every
gradient at once: the gradients cannot say where it came from. The autograd graph of the loss can, as
long as backward has not run yet (running it frees what the graph saved): each node keeps the tensors
its backward needs (``SoftmaxBackward0`` its result, ``AddmmBackward0`` its input and weight, ...).
PyTorch exposes them as the node's ``_saved_*`` attributes ("Saved tensors" in its autograd notes),
read through :func:`gradwatch.compat.saved_attributes`; where they are missing, no origin is found.
The *origin* is a node that saved a non-finite tensor while no node below it (towards the inputs)
did; the parameters nearest it upstream (its layer's, in the graph) are the ones to name.

:func:`locate` is that walk. It is host-only Python over the graph (O(nodes), about a millisecond for a
small model), so the recorder runs it only when the loss handed to ``backward()`` is not finite and can
be read for free (a CPU scalar), at most a few times per run. Same idea as
``torch.autograd.detect_anomaly`` (which names the op of a NaN born in the *backward* pass), without
running the model under anomaly mode.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from gradwatch import compat

__all__ = ["MAX_NODES", "ForwardOrigin", "graph_leaves", "locate", "params_behind"]

#: Graphs with more nodes than this are not walked (the walk would cost more than it tells).
MAX_NODES = 200_000


@dataclasses.dataclass(frozen=True)
class ForwardOrigin:
    """Where a non-finite value in the loss was born (the result of :func:`locate`).

    Attributes:
        op: the autograd node that first saved a non-finite tensor, e.g. ``"SoftmaxBackward0"`` (the
            forward op is its name without ``Backward0``).
        value: ``"NaN"``, ``"Inf"`` or ``"-Inf"``: what was born there.
        cause: ``"op"`` (the op produced NaN/Inf from inputs that held none), ``"data"`` (a tensor given
            to the model, not computed from parameters, already held it), ``"constant"`` (a 0-dim one: a
            Python number such as ``float("inf")`` in the computation) or ``"weights"`` (a parameter
            already held it: an earlier update made it non-finite).
        positions: positions of the watched parameters nearest the origin upstream in the graph (the
            parameters feeding the op; for ``"weights"``, the non-finite parameter itself), in the
            watcher's order; empty when no watched parameter is upstream of it.
        loss: the non-finite loss value read before ``backward()`` (NaN, ``inf`` or ``-inf``), when the
            recorder read it (it may differ from ``value``: an Inf turned into NaN further on).
    """

    op: str
    value: str
    cause: str
    positions: tuple[int, ...]
    loss: float | None = None


def _saved(node: Any, names: dict[type, list[str]]) -> Iterator[torch.Tensor]:
    """The floating-point tensors ``node`` saved for its backward (its ``_saved_*`` attributes)."""
    kind = type(node)
    attrs = names.get(kind)
    if attrs is None:
        attrs = names[kind] = compat.saved_attributes(kind)
    for attr in attrs:
        try:
            value = getattr(node, attr)
        except Exception:  # freed (after backward), or not a tensor PyTorch can hand out
            continue
        for t in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                yield t


#: Tensor types read: plain tensors only. A subclass may run more than a local op to answer ``isnan``
#: (a ``DTensor``, FSDP2's sharded parameters, gathers across ranks: on one rank alone that hangs or
#: crashes the job).
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _readable(t: torch.Tensor) -> bool:
    """Whether ``t`` is a plain strided tensor whose storage still holds every entry it views.

    FSDP2 frees the storage of the all-gathered parameters after the forward pass (``resize_(0)``) and
    gathers it again in backward: the graph still holds tensors over the empty storage until then.
    """
    if type(t) not in _PLAIN or t.is_nested or t.layout != torch.strided or t.is_meta:
        return False  # (a nested tensor reports the strided layout but has no strides to check)
    last = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if n > 0)
    return (last + 1) * t.element_size() <= t.untyped_storage().nbytes()


def _bad(t: torch.Tensor, value: str) -> bool:
    if not _readable(t):
        return False
    if value == "NaN":
        return bool(torch.isnan(t).any())
    return bool((t == (math.inf if value == "Inf" else -math.inf)).any())


def _search_order(roots: Sequence[torch.Tensor]) -> tuple[str, ...]:
    """Which non-finite values to look for, first to last, from what the roots hold.

    An Inf is looked for with the root's own sign: a ``-inf`` saved on purpose (an attention mask, a
    learned temperature dividing masked scores) must not be taken for the ``+inf`` of an overflowing
    ``exp`` that made the loss infinite. A NaN root is looked for as NaN first (an Inf turned into NaN
    further on is found by following the NaN down to the op that made it, see :func:`_producer`).
    """
    plain = [r.detach() for r in roots if _readable(r)]
    if any(bool(torch.isnan(r).any()) for r in plain):
        return ("NaN", "Inf", "-Inf")
    if any(bool((r == math.inf).any()) for r in plain):
        return ("Inf", "NaN")
    return ("-Inf", "NaN")


def locate(
    roots: Sequence[torch.Tensor], positions: Mapping[int, int], max_nodes: int = MAX_NODES
) -> ForwardOrigin | None:
    """The node where the NaN (else the Inf) in ``roots`` was born, before ``backward()`` frees the graph.

    Args:
        roots: the tensors about to be differentiated (the loss), with a ``grad_fn``; any device.
        positions: ``id()`` of each watched parameter -> its position.
        max_nodes: graphs larger than this are not walked.

    Returns:
        The origin, or None: no node saved a non-finite tensor (the NaN is born in the loss function's
        own reduction, or in a saved tensor PyTorch does not expose), or the graph is too large. The
        value is looked for as the roots hold it (:func:`_search_order`); the origin is the node below
        which no node saved it, or, when that node saved it as an *input*, the op that computed it
        (:func:`_producer`).

    Host-only Python, O(nodes) plus one ``isnan``/``isinf`` per saved tensor (a device sync each on an
    accelerator): meant for the rare loss that is already non-finite.
    """
    nodes: list[Any] = []
    for node in _graph_nodes([r.grad_fn for r in roots]):
        nodes.append(node)
        if len(nodes) > max_nodes:
            return None
    names: dict[type, list[str]] = {}
    saved = {node: list(_saved(node, names)) for node in nodes}
    for value in _search_order(roots):
        bad = {node: [t for t in saved[node] if _bad(t, value)] for node in nodes}
        bad = {node: ts for node, ts in bad.items() if ts}
        if not bad:
            continue
        below = _bad_below(nodes, bad)
        origins = [node for node in nodes if node in bad and not below[node]]
        if origins:
            node, tensors = origins[0], bad[origins[0]]
            producer = _producer(node, tensors)
            if producer is not None:  # the op that made the value saved nothing: its consumer kept it
                return _describe(producer, [], value, positions)
            return _describe(node, tensors, value, positions)
    return None


def _producer(node: Any, tensors: list[torch.Tensor]) -> Any:
    """The node that computed one of ``tensors`` (saved by ``node`` as an input), past views; or None.

    ``log``, ``div``, ``add`` keep no copy of their result; the op that reads it next saves it as its
    input, and that tensor's ``grad_fn`` is the op that made it. A saved output's ``grad_fn`` is ``node``
    itself (``SoftmaxBackward0``'s result): then ``node`` made the value.
    """
    for t in tensors:
        made = t.grad_fn
        if made is None or made is node:
            continue
        return _past_views(made)
    return None


def _past_views(node: Any, hops: int = 1 << 30) -> Any:
    """Follow ``node`` down through at most ``hops`` view/cast nodes (:data:`_VIEW_NODES`) of one input."""
    for _ in range(hops):
        if node.name().rstrip("0123456789") not in _VIEW_NODES:
            break
        below = [fn for fn, _ in node.next_functions if fn is not None]
        if len(below) != 1:
            break
        node = below[0]
    return node


def _bad_below(nodes: list[Any], bad: Mapping[Any, Any]) -> dict[Any, bool]:
    """Per node: whether some node below it (towards the inputs) saved a non-finite tensor."""
    below: dict[Any, bool] = {}
    for root in nodes:  # iterative post-order over the DAG, each node once
        if root in below:
            continue
        work = [(root, False)]
        while work:
            node, expanded = work.pop()
            children = [fn for fn, _ in node.next_functions if fn is not None]
            if expanded:
                below[node] = any(child in bad or below[child] for child in children)
                continue
            if node in below:
                continue
            work.append((node, True))
            work.extend((child, False) for child in children if child not in below)
    return below


def _describe(
    node: Any, tensors: list[torch.Tensor], value: str, positions: Mapping[int, int]
) -> ForwardOrigin:
    """Name the cause and the watched parameters nearest ``node``."""
    held = tuple(sorted(i for i, p in _watched_below(node, positions) if _bad(p.detach(), value)))
    if held:  # parameters upstream of the op are themselves non-finite (an earlier update made them so)
        return ForwardOrigin(node.name(), value, "weights", held)
    cause = "op"
    if tensors and all(t.grad_fn is None and not t.requires_grad for t in tensors):  # given, not computed
        cause = "constant" if all(t.dim() == 0 for t in tensors) else "data"
    return ForwardOrigin(node.name(), value, cause, _nearest(node, positions))


def _graph_nodes(nodes: Sequence[Any]) -> Iterator[Any]:
    """Every autograd node reachable from ``nodes`` through ``next_functions``, each once (depth-first).

    Host-only, O(graph size); ``None`` entries of ``nodes`` are skipped.
    """
    seen: set[Any] = set()
    stack = [n for n in nodes if n is not None]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        yield n
        stack.extend(fn for fn, _ in n.next_functions if fn is not None)


def graph_leaves(nodes: Sequence[Any]) -> Iterator[torch.Tensor]:
    """The leaf tensors (``AccumulateGrad`` nodes' ``variable``) below ``nodes`` in a graph, each node once.

    Host-only, O(graph size); ``None`` entries of ``nodes`` are skipped.
    """
    for n in _graph_nodes(nodes):
        var = getattr(n, "variable", None)
        if isinstance(var, torch.Tensor):
            yield var


def _watched_below(node: Any, positions: Mapping[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
    """(position, parameter) of every watched parameter upstream of ``node`` in the graph."""
    return ((positions[id(v)], v) for v in graph_leaves([node]) if id(v) in positions)


def _nearest(node: Any, positions: Mapping[int, int]) -> tuple[int, ...]:
    """Positions of the watched parameters of the first parameterised ops on every path below ``node``.

    Breadth-first over ``next_functions`` from ``node`` (included); a node whose inputs include a watched
    parameter (directly, or through views and casts such as the ``TBackward0`` of a linear layer's
    weight) is a layer's op: its parameters are collected and the walk goes no further down
    that path. For ``softmax(q(x) @ k(x).T)`` that is both projections, for ``exp(-log_var(h))`` the
    log-variance head, not the layers before them.
    """
    found: set[int] = set()
    seen: set[Any] = set()
    queue = deque([node])
    while queue:
        n = queue.popleft()
        if n in seen:
            continue
        seen.add(n)
        held = _parameters_of(n, positions)
        if held:
            found.update(held)
            continue
        queue.extend(fn for fn, _ in n.next_functions if fn is not None)
    return tuple(sorted(found))


#: Autograd nodes of views, reshapes and dtype casts: a layer reads its parameters through a chain of
#: these (``TBackward0`` for a linear layer's weight, ``SplitBackward0`` for a packed projection's
#: chunk, ``ToCopyBackward0`` under autocast), never through another layer's op.
_VIEW_NODES = frozenset(
    {
        "AliasBackward",
        "AsStridedBackward",
        "CloneBackward",
        "ExpandBackward",
        "PermuteBackward",
        "ReshapeAliasBackward",
        "SelectBackward",
        "SliceBackward",
        "SplitBackward",
        "SplitWithSizesBackward",
        "SqueezeBackward",
        "TBackward",
        "ToCopyBackward",
        "TransposeBackward",
        "UnbindBackward",
        "UnsafeViewBackward",
        "UnsqueezeBackward",
        "ViewBackward",
    }
)


def _parameters_of(node: Any, positions: Mapping[int, int], hops: int = 3) -> list[int]:
    """Watched parameters among ``node``'s inputs, directly or through up to ``hops`` view nodes."""
    out = []
    for child, _ in node.next_functions:
        if child is None:
            continue
        var = getattr(_past_views(child, hops), "variable", None)
        if isinstance(var, torch.Tensor) and id(var) in positions:
            out.append(positions[id(var)])
    return out


def params_behind(
    roots: Sequence[Any], positions: Mapping[int, int], owner_of: Mapping[int, str]
) -> dict[str, frozenset[int]] | None:
    """For each owner, the watched parameters *behind* one of its layers in the graph below ``roots``.

    A parameter is behind owner ``o`` when some path from a root down to it passes through the input
    (not the parameter) side of an op that reads one of ``o``'s parameters (directly, through view and
    cast nodes, or through a small computation on that parameter alone: ``_one_parameter``): a
    generator's weights are behind the discriminator's layers in the graph of the generator's loss; a
    trunk is not behind the heads above it, and two parallel branches are not behind each other.
    Host-only: each node is visited once per owner set it is reached with, so O(graph size x owners),
    plus a walk of at most 16 nodes below each input to tell a parameter side from an activation.
    Used by the ``missing_zero_grad`` leak rule (``docs/zero-grad.md``).

    Args:
        roots: autograd nodes (``loss.grad_fn``) of one backward call.
        positions: ``id()`` of each watched parameter -> its position.
        owner_of: position -> owner name (an optimizer's); positions not in it own nothing.

    Returns:
        owner -> positions behind its layers (owners with none are left out), or ``None`` when the graph
        has more than :data:`MAX_NODES` nodes.
    """
    masks: dict[Any, frozenset[str]] = {}
    sided: dict[Any, int | None] = {}  # (memo of _one_parameter)
    behind: dict[str, set[int]] = {}
    stack: list[tuple[Any, frozenset[str]]] = [(r, frozenset()) for r in roots if r is not None]
    visits = 0
    while stack:
        node, mask = stack.pop()
        seen = masks.get(node)
        if seen is not None:
            if mask <= seen:
                continue
            mask = mask | seen
        masks[node] = mask
        visits += 1
        if visits > MAX_NODES:
            return None
        var = getattr(node, "variable", None)
        if isinstance(var, torch.Tensor):  # a leaf: behind every owner in its mask
            pos = positions.get(id(var))
            if pos is not None:
                for owner in mask:
                    behind.setdefault(owner, set()).add(pos)
            continue
        sides = [
            (child, _one_parameter(child, positions, sided)) for child, _ in node.next_functions if child
        ]
        read = frozenset(owner_of[p] for _, p in sides if p is not None and p in owner_of)
        for child, p in sides:
            stack.append((child, mask if p is not None else mask | read))
    return {owner: frozenset(found) for owner, found in behind.items()}


#: Reductions: a term computed from one parameter through one of these is a penalty added to the loss
#: (``p.pow(2).sum()``, ``p.norm()``), not the weight a layer reads.
_REDUCTIONS = (
    "SumBackward",
    "MeanBackward",
    "NormBackward",
    "LinalgVectorNormBackward",
    "LinalgNormBackward",
)


def _one_parameter(
    node: Any, positions: Mapping[int, int], memo: dict[Any, int | None], budget: int = 16
) -> int | None:
    """The watched parameter ``node`` computes from alone, or None: an op's parameter side.

    A layer reads its weight directly, through views and casts (``TBackward0``), or through a small
    computation on that one tensor (``weight * scale`` of an equalized-learning-rate layer, the
    ``weight / sigma`` of spectral normalisation): the subgraph below ``node`` (at most ``budget``
    nodes, no reduction to a penalty: :data:`_REDUCTIONS`) reaches exactly one leaf, a watched
    parameter. An activation reaches the layers below it.
    """
    if node in memo:
        return memo[node]
    leaves: set[int] = set()
    seen: set[Any] = set()
    stack = [node]
    found: int | None = None
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if len(seen) > budget:
            leaves.add(-1)
            break
        var = getattr(n, "variable", None)
        if isinstance(var, torch.Tensor):
            leaves.add(positions.get(id(var), -1))
            if len(leaves) > 1:
                break
            continue
        if n.name().startswith(_REDUCTIONS):  # a penalty on the parameter (weight decay in the loss)
            leaves.add(-1)
            break
        stack.extend(fn for fn, _ in n.next_functions if fn is not None)
    if len(leaves) == 1 and -1 not in leaves:
        found = next(iter(leaves))
    memo[node] = found
    return found
