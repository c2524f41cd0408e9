"""A NaN/Inf born in the forward pass, named at its origin (gradwatch.forward_origin and the recorder's use).

The walk of the loss's autograd graph is checked against models where the origin is known by
construction, and the recorder's policy (read the loss on the CPU, on an accelerator only with
``read_loss=True``, bounded walks, nothing left wrapped) against counted calls.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch import recorder, stats
from gradwatch.forward_origin import locate, params_behind


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        a, _ = self.attn(h, h, h, key_padding_mask=pad)
        return self.head(a.mean(1))


def _positions(model: nn.Module) -> tuple[dict[int, int], list[str]]:
    named = list(model.named_parameters())
    return {id(p): i for i, (_, p) in enumerate(named)}, [n for n, _ in named]


def _batch(empty_row: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 5, 8, generator=g)
    pad = torch.zeros(4, 5, dtype=torch.bool)
    pad[:, 3:] = True  # padded keys everywhere: -inf in every row
    if empty_row:
        pad[1] = True  # one sequence with no real key: softmax of a row of -inf
    return x, pad, torch.tensor([0, 1, 2, 0])


def test_a_fully_masked_attention_row_is_born_in_the_softmax_next_to_the_attention_weights() -> None:
    torch.manual_seed(0)
    model = Attn()
    positions, names = _positions(model)
    x, pad, y = _batch(empty_row=True)
    loss = nn.functional.cross_entropy(model(x, pad), y)
    assert math.isnan(loss.item())
    found = locate([loss], positions)
    assert found is not None and (found.op, found.value, found.cause) == ("SoftmaxBackward0", "NaN", "op")
    assert {names[i] for i in found.positions} <= {"attn.in_proj_weight", "attn.in_proj_bias"}
    assert found.positions
    # rows masked in part hold -inf before the softmax and exact zeros after it: nothing to find
    x, pad, y = _batch(empty_row=False)
    assert locate([nn.functional.cross_entropy(model(x, pad), y)], positions) is None


def test_the_parameters_named_are_those_of_the_first_layers_on_every_input_path() -> None:
    # softmax(q(x) @ k(x).T) with a fully masked row: both projections feed the op (k through a
    # transpose), the embedding below them does not count
    class SelfAttn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(30, 16)
            self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            h = self.emb(tokens)
            scores = (self.q(h) @ self.k(h).transpose(1, 2)).masked_fill(~keep[:, None, :], float("-inf"))
            return (torch.softmax(scores, -1) @ self.v(h)).mean()

    torch.manual_seed(0)
    model = SelfAttn()
    positions, names = _positions(model)
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[1] = False
    found = locate([model(torch.randint(0, 30, (3, 5)), keep)], positions)
    assert found is not None and found.op == "SoftmaxBackward0"
    assert {names[i] for i in found.positions} == {"q.weight", "q.bias", "k.weight", "k.bias"}


def test_an_overflowing_exp_is_an_inf_origin_at_the_layer_it_reads() -> None:
    torch.manual_seed(0)
    body, log_var = nn.Linear(4, 8), nn.Linear(8, 1)
    model = nn.ModuleDict({"body": body, "log_var": log_var})
    positions, names = _positions(model)
    with torch.no_grad():
        log_var.bias.fill_(-200.0)
    lv = log_var(torch.relu(body(torch.randn(6, 4))))
    loss = (0.5 * lv + 0.5 * torch.exp(-lv)).mean()
    assert loss.item() == math.inf
    found = locate([loss], positions)
    assert found is not None and (found.op, found.value, found.cause) == ("ExpBackward0", "Inf", "op")
    assert [names[i] for i in found.positions] == ["log_var.weight", "log_var.bias"]  # not body's


def test_nan_in_the_batch_is_data_and_nan_in_a_weight_is_weights() -> None:
    torch.manual_seed(0)
    model = Attn()
    positions, names = _positions(model)
    x, pad, y = _batch(empty_row=False)
    x[2, 0, 5] = float("nan")
    found = locate([nn.functional.cross_entropy(model(x, pad), y)], positions)
    assert found is not None and found.cause == "data" and found.value == "NaN"
    assert {names[i] for i in found.positions} <= {"emb.weight", "emb.bias"}
    x, pad, y = _batch(empty_row=False)
    with torch.no_grad():
        model.emb.weight[3, 1] = float("nan")
    found = locate([nn.functional.cross_entropy(model(x, pad), y)], positions)
    assert found is not None and found.cause == "weights"
    assert [names[i] for i in found.positions] == ["emb.weight"]


def test_a_graph_too_large_is_not_walked() -> None:
    torch.manual_seed(0)
    model = Attn()
    positions, _ = _positions(model)
    x, pad, y = _batch(empty_row=True)
    loss = nn.functional.cross_entropy(model(x, pad), y)
    assert locate([loss], positions, max_nodes=10) is None


def _train(model: Attn, opt: torch.optim.Optimizer, bad_steps: set[int], steps: int, scaler=None) -> None:
    for k in range(steps):
        x, pad, y = _batch(empty_row=k in bad_steps, seed=k)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x, pad), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:  # the scaler skips the update of a non-finite step: the weights stay finite
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


def test_on_the_cpu_the_nan_step_names_the_attention_and_walks_are_bounded(monkeypatch) -> None:
    calls = []
    real = recorder.locate
    monkeypatch.setattr(recorder, "locate", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(1)
    model = Attn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    original = torch.autograd.backward
    with gw.watch(model, opt, on_finding="ignore") as w:
        assert torch.autograd.backward is not original  # (wrapped while attached)
        _train(model, opt, bad_steps={3}, steps=12)
    assert torch.autograd.backward is original  # put back at close
    (first,) = w.findings
    assert (first.kind, first.step) == ("nonfinite_grad", 3)
    assert set(first.params) == {"attn.in_proj_weight", "attn.in_proj_bias"}
    assert "born in the forward pass" in first.message and "Softmax" in first.message
    assert "Propagated from there into" in first.message and "head.weight" in first.message
    assert w.history[3].forward_origin is not None and w.history[2].forward_origin is None
    # step 3 walked once; its update made the weights NaN, the next walk says so and the walks stop
    assert len(calls) == 2


def test_a_step_the_grad_scaler_skips_is_not_reported() -> None:
    # an overflow the scaler handles (it skips the update) is AMP working, not a bug: the origin located
    # before backward goes with a step that is never recorded
    torch.manual_seed(1)
    model = Attn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    with gw.watch(model, opt, on_finding="ignore") as w:
        _train(model, opt, bad_steps={2, 5}, steps=8, scaler=scaler)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # (the skipped updates kept them)
    assert w.findings == []
    # the steps that held a skipped pass keep where its loss was born (the record's gradients are finite)
    carried = [r.forward_origin for r in w.history if r.forward_origin is not None]
    assert carried and all(o.op == "SoftmaxBackward0" for o in carried)


def test_a_loss_on_an_accelerator_is_not_read(monkeypatch) -> None:
    # the CPU stands in for an accelerator: reading the loss there would wait for the device
    monkeypatch.setattr(stats, "reads_freely", lambda device: False)
    reads = []
    real_item = torch.Tensor.item

    def item(self):
        reads.append(1)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    torch.manual_seed(1)
    model = Attn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        _train(model, opt, bad_steps={2}, steps=4)
    assert reads == []
    (first,) = w.findings  # the gradients' own rule: the first layer the backward pass reached
    assert first.step == 2 and "first layer the backward pass reached" in first.message
    assert "read_loss=True" in first.message  # (how to have the op named)


def test_read_loss_true_reads_a_loss_on_an_accelerator_and_names_the_origin(monkeypatch) -> None:
    monkeypatch.setattr(stats, "reads_freely", lambda device: False)  # (the CPU stands in for one)
    torch.manual_seed(1)
    model = Attn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore", read_loss=True) as w:
        _train(model, opt, bad_steps={2}, steps=4)
    first = w.findings[0]
    assert (first.kind, first.step) == ("nonfinite_grad", 2)
    assert set(first.params) == {"attn.in_proj_weight", "attn.in_proj_bias"}
    assert "Softmax" in first.message and "the loss itself was nan" in first.message


def test_read_loss_false_never_reads_the_loss(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(recorder, "locate", lambda *a, **k: calls.append(1))
    torch.manual_seed(1)
    model = Attn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore", read_loss=False) as w:
        _train(model, opt, bad_steps={2}, steps=4)
    assert calls == []
    assert w.findings[0].step == 2 and "first layer the backward pass reached" in w.findings[0].message


@pytest.mark.parametrize("bad", ["yes", 1, 0.0])
def test_read_loss_takes_none_true_or_false(bad) -> None:
    with pytest.raises(TypeError, match="read_loss must be None"):
        gw.Watcher(nn.Linear(2, 2), read_loss=bad)


def test_a_finite_loss_costs_one_read_and_no_walk(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(recorder, "locate", lambda *a, **k: calls.append(1))
    torch.manual_seed(1)
    model = Attn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        _train(model, opt, bad_steps=set(), steps=4)
        x, pad, _ = _batch(empty_row=False)
        out = model(x, pad)
        out.backward(torch.ones_like(out))  # a vector-Jacobian product, not a loss: never read
    assert calls == [] and w.findings == []


@pytest.mark.parametrize("order", ["fifo", "lifo"])
def test_two_watchers_share_one_wrapper_and_put_it_back(order: str) -> None:
    original = torch.autograd.backward
    a, b = Attn(), Attn()
    wa = gw.watch(a, torch.optim.SGD(a.parameters(), lr=0.1), on_finding="ignore")
    wrapped = torch.autograd.backward
    wb = gw.watch(b, torch.optim.SGD(b.parameters(), lr=0.1), on_finding="ignore")
    assert torch.autograd.backward is wrapped  # one wrapper, whatever the number of watchers
    first, second = (wa, wb) if order == "fifo" else (wb, wa)
    first.close()
    assert torch.autograd.backward is wrapped
    second.close()
    assert torch.autograd.backward is original


def test_saved_tensors_over_freed_storage_are_skipped_not_read() -> None:
    # FSDP2 frees the all-gathered parameters' storage after forward (resize_(0)) and gathers it again in
    # backward: reading such a saved tensor before backward would read freed memory
    w = torch.randn(3, 3, requires_grad=True)
    gathered = w * 1.0  # (a non-leaf copy, as FSDP2's unsharded parameter)
    x = torch.randn(2, 3)
    x[0, 0] = float("nan")
    loss = (x @ gathered).sum()
    gathered.untyped_storage().resize_(0)
    found = locate([loss], {id(w): 0})
    assert found is not None and found.cause == "data"  # (x, readable, is still found)
    assert found.positions == (0,)


def _origin_names(model: nn.Module, loss: torch.Tensor) -> tuple[str, set[str]]:
    positions, names = _positions(model)
    found = locate([loss], positions)
    assert found is not None
    return f"{found.value} at {found.op} ({found.cause})", {names[i] for i in found.positions}


def test_an_op_that_keeps_no_copy_of_its_result_is_found_through_the_next_op() -> None:
    # log(0) = -inf: LogBackward0 saves only its input; AddmmBackward0 of the next layer saves the -inf as
    # its input, and that tensor's grad_fn is the log: the origin, after layer l1 (not l2)
    torch.manual_seed(0)
    model = nn.ModuleDict({"l1": nn.Linear(4, 8), "l2": nn.Linear(8, 1)})
    h = torch.relu(model["l1"](torch.randn(8, 4)))
    what, named = _origin_names(model, model["l2"](torch.log(h)).mean())
    assert what == "-Inf at LogBackward0 (op)" and named == {"l1.weight", "l1.bias"}
    # a hand-written standardisation of a constant row: 0 / 0 in a division, named after l1
    h = model["l1"](torch.ones(8, 4)) * 0.0
    z = (h - h.mean(-1, keepdim=True)) / h.std(-1, keepdim=True)
    what, named = _origin_names(model, model["l2"](z).mean())
    assert what == "NaN at DivBackward0 (op)" and named <= {"l1.weight", "l1.bias"} and named


def test_an_inf_that_turns_into_nan_further_on_is_named_where_it_overflowed() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(4, 8), "b": nn.Linear(8, 8), "c": nn.Linear(8, 1)})
    with torch.no_grad():
        model["a"].bias.fill_(1000.0)
    e = torch.exp(model["a"](torch.randn(6, 4)))
    loss = model["c"](torch.relu(model["b"](e - e))).mean()  # inf - inf = NaN, read by b
    what, named = _origin_names(model, loss)
    assert what == "NaN at SubBackward0 (op)" and named <= {"a.weight", "a.bias"} and named
    # a hand-written softmax whose exp overflows: inf / inf in the division, q and k feed it, v does not
    model = nn.ModuleDict({"q": nn.Linear(8, 8), "k": nn.Linear(8, 8), "v": nn.Linear(8, 8)})
    with torch.no_grad():
        model["q"].weight.mul_(200.0)
    x = torch.randn(2, 5, 8)
    e = (model["q"](x) @ model["k"](x).transpose(1, 2)).exp()
    loss = ((e / e.sum(-1, keepdim=True)) @ model["v"](x)).mean()
    what, named = _origin_names(model, loss)
    assert what == "NaN at DivBackward0 (op)"
    assert named and {n.split(".")[0] for n in named} <= {"q", "k"}


def test_a_minus_inf_mask_does_not_hide_an_overflow_of_the_other_sign() -> None:
    # scores with a partial -inf mask divided by a learned temperature: the division saves the -inf
    # (healthy); the loss is +inf because exp(-log_var) overflows in another layer
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"q": nn.Linear(8, 8), "k": nn.Linear(8, 8), "v": nn.Linear(8, 8), "lv": nn.Linear(8, 1)}
    )
    model.register_parameter("tau", nn.Parameter(torch.ones(())))
    with torch.no_grad():
        model["lv"].bias.fill_(-200.0)
    mask = torch.zeros(5, 5)
    mask[:, 3:] = float("-inf")
    x = torch.randn(2, 5, 8)
    scores = (model["q"](x) @ model["k"](x).transpose(1, 2) + mask) / model.tau
    a = scores.softmax(-1) @ model["v"](x)
    lv = model["lv"](a)
    what, named = _origin_names(model, (lv + torch.exp(-lv)).mean())
    assert what == "Inf at ExpBackward0 (op)" and named <= {"lv.weight", "lv.bias"} and named


def test_walks_spent_on_skipped_steps_do_not_hide_a_later_origin() -> None:
    # three corrupt batches whose updates the loop skips (never recorded, never reported), then the bug
    torch.manual_seed(1)
    model = Attn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(8):
            x, pad, y = _batch(empty_row=k == 6, seed=k)
            if k in (1, 2, 3):
                x[0, 0, 0] = float("nan")
            opt.zero_grad()
            nn.functional.cross_entropy(model(x, pad), y).backward()
            if k == 6 or all(torch.isfinite(p.grad).all() for p in model.parameters()):
                opt.step()
            w.step()
    located = [f for f in w.findings if "born in the forward pass" in f.message]
    assert located and set(located[0].params) == {"attn.in_proj_weight", "attn.in_proj_bias"}


def test_losses_given_as_a_generator_are_read_once_and_still_differentiated() -> None:
    # torch.autograd.backward takes any iterable: the wrapper must not use up a generator before torch
    def grads(watched: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Linear(3, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss = net(torch.randn(4, 3)).pow(2).mean()
        if watched:
            with gw.watch(net, opt, on_finding="ignore"):
                torch.autograd.backward(x for x in [loss])
        else:
            torch.autograd.backward(x for x in [loss])
        return [p.grad.clone() for p in net.parameters()]

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_nested_tensor_in_the_graph_does_not_stop_recording() -> None:
    # a nested tensor reports the strided layout but has no strides: the walk skips it, and whatever a
    # walk cannot read never ends the recording
    torch.manual_seed(0)
    net = nn.Linear(3, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gw.watch(net, opt, on_finding="ignore") as w:
        for step in range(3):
            nested = torch.nested.as_nested_tensor([net(torch.randn(2, 3)), net(torch.randn(3, 3))]) * 2.0
            loss = sum(part.sum() for part in nested.unbind()) * (math.nan if step == 1 else 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert not w._recorder.failed
    assert len(w.history) == 3
    assert [(f.kind, f.step) for f in w.findings] == [("nonfinite_grad", 1)]


def test_the_message_gives_the_loss_as_read_not_the_value_found() -> None:
    # exp overflows to Inf; inf - inf makes the loss NaN: the origin is the Inf, the loss was NaN
    def overflow(net: nn.Linear) -> torch.Tensor:
        e = torch.exp(net(torch.randn(8, 4)) * 100)
        return (e - e).mean()

    torch.manual_seed(0)
    net = nn.Linear(4, 4)
    positions, _ = _positions(net)
    found = locate([overflow(net)], positions)
    assert found is not None and found.value == "Inf"
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gw.watch(net, opt, on_finding="ignore") as w:
        overflow(net).backward()
        opt.step()
    (f,) = w.findings
    assert "the loss itself was nan" in f.message and "the loss itself was Inf" not in f.message


def test_params_behind_follows_the_input_side_of_each_owners_layers() -> None:
    # a GAN: G's weights are behind D's layers in the graph of G's loss; D's are behind no G layer. An
    # actor-critic trunk is behind the heads, not the heads behind the trunk; two parallel experts are not
    # behind each other, whichever is written first; co-parameters of one op are not behind each other
    torch.manual_seed(0)
    g, d = (
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1)),
    )
    model = nn.ModuleDict({"g": g, "d": d})
    positions, names = _positions(model)
    owner_of = {i: ("G" if n.startswith("g.") else "D") for i, n in enumerate(names)}
    found = params_behind([d(g(torch.randn(5, 3))).mean().grad_fn], positions, owner_of)
    assert found is not None
    assert {names[i] for i in found["D"]} == {n for n in names if n.startswith("g.")} | {
        "d.0.weight",
        "d.0.bias",
    }
    assert {names[i] for i in found["G"]} == {"g.0.weight", "g.0.bias"}  # (g.0 is behind g.2's layer)
    trunk, actor, critic = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 1)
    model = nn.ModuleDict({"trunk": trunk, "actor": actor, "critic": critic})
    positions, names = _positions(model)
    owner_of = {i: n.split(".")[0] for i, n in enumerate(names)}
    h = trunk(torch.randn(5, 3))
    found = params_behind([(actor(h).sum() + critic(h).sum()).grad_fn], positions, owner_of)
    assert found is not None and set(found) == {"actor", "critic"}
    assert all({names[i] for i in found[o]} == {"trunk.weight", "trunk.bias"} for o in found)
    for first in ("a", "b"):
        a, b = nn.Linear(3, 1), nn.Linear(3, 1)
        model = nn.ModuleDict({"a": a, "b": b})
        positions, names = _positions(model)
        x = torch.randn(5, 3)
        out = a(x) + b(x) if first == "a" else b(x) + a(x)
        owner_of = {i: n.split(".")[0] for i, n in enumerate(names)}
        assert params_behind([out.sum().grad_fn], positions, owner_of) == {}


@pytest.mark.parametrize("read_loss", [None, True])
def test_a_complex_one_element_root_is_not_read_as_a_loss(read_loss) -> None:
    # backward(gradient) on a complex scalar: no real loss to check; recording goes on
    torch.manual_seed(0)
    model = nn.Linear(3, 1).to(torch.cfloat)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, on_finding="ignore", read_loss=read_loss) as w:
        for _ in range(3):
            opt.zero_grad()
            err = model(torch.randn(1, 3, dtype=torch.cfloat)).sum().reshape(1)
            (err.conj() * err).backward(torch.ones(1, dtype=torch.cfloat))
            opt.step()
    assert len(w.history) == 3 and not w._recorder.failed
