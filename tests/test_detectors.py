"""Each detector of issue 4 fires on its bug (beyond the shared cases) with the right names and step."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradwatch as gw


def kinds(w) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in w.findings:
        out.setdefault(f.kind, set()).update(f.params)
    return out


def _train(model, opt, x, y, steps, loss_fn=nn.functional.mse_loss, w=None, record=False):
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if record:
            w.record_loss(loss)
        opt.step()


# ----------------------------------------------------------------------------- nonfinite_grad
class SqrtMiddle(nn.Module):
    """The NaN is born in `mid` (sqrt at 0 in its output path), nearer layers stay finite."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        m = self.mid(h)
        m = torch.sqrt(m * m * 0)  # sqrt'(0) = inf, times 0 -> NaN into mid's backward
        return self.out(torch.tanh(h) + m)


def test_nonfinite_origin_is_the_layer_where_nan_is_born() -> None:
    torch.manual_seed(0)
    model = SqrtMiddle()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        _train(model, opt, x, y, 3, w=w, record=True)
    f = next(f for f in w.findings if f.kind == "nonfinite_grad")
    assert f.step == 0
    assert f.params[:2] == ("mid.weight", "mid.bias")  # origin first
    assert "born in layer mid's backward" in f.message
    assert "out.weight" in f.message  # the finite layer nearer the loss is cited as evidence
    assert "the loss itself was finite" in f.message
    assert "inp.weight" not in f.params  # propagated further from the loss: named in the message only
    assert "Propagated from there into inp.weight" in f.message


def _one_infinite_step(vector_jacobian: bool) -> gw.Finding:
    """One step whose squared errors are multiplied by Inf after the last layer; its nonfinite finding.

    ``vector_jacobian``: ``backward(ones)`` of the whole output instead of ``backward()`` of the mean.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        opt.zero_grad()
        out = (model(x) - y).pow(2) * float("inf")
        if vector_jacobian:
            out.backward(torch.ones_like(out))
            w.record_loss(out.sum())
        else:
            loss = out.mean()
            loss.backward()
            w.record_loss(loss)
        opt.step()
    (f,) = [f for f in w.findings if f.kind == "nonfinite_grad"]
    return f


def test_nonfinite_in_loss_says_so() -> None:
    f = _one_infinite_step(vector_jacobian=False)
    assert f.params == ("2.weight", "2.bias")  # the layer the infinite factor follows
    assert "a constant that is Inf" in f.message and "MulBackward0" in f.message
    assert "the loss itself was inf" in f.message


def test_nonfinite_loss_with_a_vector_jacobian_product_keeps_the_gradient_rule() -> None:
    # backward(gradient) of a whole output is not a loss: not read; the gradients' backward order names it
    f = _one_infinite_step(vector_jacobian=True)
    assert f.params[:2] == ("2.weight", "2.bias")
    assert "first layer the backward pass reached" in f.message and "the loss itself was" in f.message
    assert "finite" not in f.message.split("the loss itself was")[1].split(".")[0]


def test_weights_becoming_nonfinite_after_a_finite_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e30)  # the update overflows float32
    x, y = torch.randn(8, 3) * 1e6, torch.randn(8, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        _train(model, opt, x, y, 1)
    (f,) = w.findings
    assert f.kind == "nonfinite_grad" and f.step == 0
    assert "were finite, but the parameters became non-finite" in f.message


# ----------------------------------------------------------------------------- no_grad
class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 1)
        self.b = nn.Linear(4, 1)
        self.cut_b = False

    def forward(self, x):
        b = self.b(x)
        return self.a(x) + (b.detach() if self.cut_b else b)


def test_no_grad_tells_never_from_stopped() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"t": TwoTower(), "unused": nn.Linear(4, 1)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    with gw.watch(model, opt, on_finding="ignore", no_grad_steps=3) as w:
        _train(model["t"], opt, x, y, 4)
        model["t"].cut_b = True  # from now on .detach() cuts b out of the graph
        _train(model["t"], opt, x, y, 4)
    by_name = {p: f for f in w.findings for p in f.params}
    assert kinds(w) == {"no_grad": {"unused.weight", "unused.bias", "t.b.weight", "t.b.bias"}}
    assert "never received a gradient" in by_name["unused.weight"].message
    assert by_name["unused.weight"].step == 2  # within no_grad_steps=3 optimizer steps
    assert "stopped receiving gradients" in by_name["t.b.weight"].message
    assert by_name["t.b.weight"].step == 6
    assert ".detach()" in by_name["t.b.weight"].message


def test_loss_without_graph_is_reported_at_once() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    with gw.watch(model, opt, on_finding="ignore") as w:
        loss = torch.tensor(model(x).mean().item(), requires_grad=True)  # re-wrapped: graph cut
        loss.backward()
        w.record_loss(loss)
        opt.step()
    (f,) = w.findings
    assert f.kind == "no_grad" and set(f.params) == {"weight", "bias"}
    assert "leaf tensor made to require grad" in f.message


class ListModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 1)
        self.blocks = [nn.Linear(4, 4), nn.Linear(4, 4)]  # BUG: plain list, not registered

    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.head(x)


def test_layers_in_a_plain_list_are_not_updated() -> None:
    torch.manual_seed(0)
    model = ListModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        _train(model, opt, x, y, 3, w=w, record=True)
    (f,) = w.findings
    assert f.kind == "not_updated" and f.params == ()
    assert "4 tensor(s)" in f.message and "[4, 4]" in f.message and "nn.ModuleList" in f.message


# ----------------------------------------------------------------------------- not_updated
def test_param_group_that_forgot_a_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model[2].parameters(), lr=0.1)  # BUG: layer 0 forgotten
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        _train(model, opt, x, y, 3)
    (f,) = w.findings
    assert f.kind == "not_updated" and f.params == ("0.weight", "0.bias") and f.step == 0
    assert "no watched optimizer holds them (SGD does not)" in f.message


def test_zero_learning_rate_group() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.Adam([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters()}])
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    with gw.watch(model, opt, on_finding="ignore", not_updated_steps=4) as w:
        _train(model, opt, x, y, 6)
    (f,) = w.findings
    assert f.kind == "not_updated" and set(f.params) == {"0.weight", "0.bias"} and f.step == 3
    assert "learning rate is 0" in f.message


# ----------------------------------------------------------------------------- vanishing / exploding
def test_vanishing_in_a_deep_tanh_stack_with_tiny_init() -> None:
    torch.manual_seed(0)
    layers = []
    for _ in range(8):
        lin = nn.Linear(16, 16)
        nn.init.normal_(lin.weight, std=0.05)  # each layer shrinks the backward signal ~5x
        layers += [lin, nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 16), torch.randn(32, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        _train(model, opt, x, y, 8)
    assert set(kinds(w)) == {"vanishing_grad"}
    (f,) = w.findings
    assert "0.weight" in f.params and "16.weight" not in f.params  # the last layer is the reference
    assert f.step == 4  # persistence: 5 recorded steps in a row
    assert "AutoTrainer" in f.message


def test_single_spike_is_not_exploding() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with gw.watch(model, opt) as w:
        for k in range(12):
            opt.zero_grad()
            scale = 1e4 if k == 5 else 1.0  # one huge batch
            (nn.functional.mse_loss(model(x), y) * scale).backward()
            opt.step()
    assert w.findings == []


def test_exploding_by_sustained_growth_on_loose_tensors() -> None:
    a = torch.full((3,), 1.0, requires_grad=True)
    with gw.watch({"a": a}, on_finding="ignore") as w:
        for _ in range(12):
            (a.pow(4).sum()).backward()  # gradient 4 a^3 grows as a does
            with torch.no_grad():
                a += 0.02 * a.grad  # gradient *ascent*: the gradient grows every step
            a.grad = None
            if not torch.isfinite(a).all():
                break
    f = next(f for f in w.findings if f.kind == "exploding_grad")
    assert f.params == ("a",) and "grew at each of the last 5 steps" in f.message


# ----------------------------------------------------------------------------- all_zero_grad
def test_dead_relu_layer_all_zero() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[2].bias.fill_(-100.0)  # layer 2's ReLU is dead for every input
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with gw.watch(model, opt, on_finding="ignore", all_zero_steps=3) as w:
        _train(model, opt, x, y, 5)
    # everything before the dead ReLU gets exactly 0; layer 4 still learns its bias, so it is not named
    assert kinds(w) == {"all_zero_grad": {"0.weight", "0.bias", "2.weight", "2.bias"}}
    assert w.findings[0].step == 2


# ----------------------------------------------------------------------------- ineffective_freeze
def test_misspelt_parameter_attribute() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    model[0].weight.require_grad = False  # BUG: misspelt
    with gw.watch(model, on_finding="ignore") as w:
        pass
    (f,) = w.findings
    assert f.kind == "ineffective_freeze" and f.params == ("0.weight",) and "misspelt" in f.message


def test_module_attribute_freeze_set_after_attach_is_found_on_recheck() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        model[0].requires_grad = False  # BUG: attribute, not requires_grad_()
        _train(model, opt, x, y, 100)
    (f,) = w.findings
    assert f.kind == "ineffective_freeze" and f.params == ("0.weight", "0.bias") and f.step == 99
    assert "requires_grad_(False)" in f.message


def test_real_freeze_is_silent() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    with gw.watch(model) as w:
        pass
    assert w.findings == []


# ----------------------------------------------------------------------------- report
def test_report_lists_findings_most_severe_first_with_fix() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    model[2].weight.requires_grads = False  # ineffective_freeze (found at attach, step 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(3):
            nn.functional.mse_loss(model(x), y).backward()  # missing_zero_grad
            opt.step()
    report = w.report()
    lines = [line for line in report.splitlines() if line.strip().startswith("!")]
    assert [line.split("]")[0].split("[")[1] for line in lines] == ["missing_zero_grad", "ineffective_freeze"]
    assert all("Fix:" in line for line in lines)
    assert report.index("missing_zero_grad") < report.index("parameter  shape")


@pytest.mark.parametrize(
    ("option", "value", "exc"),
    [
        ("no_grad_steps", 0, ValueError),
        ("vanishing_ratio", -1.0, ValueError),
        ("exploding_ratio", "70", TypeError),
    ],
    ids=["no-grad-window", "negative-ratio", "str-ratio"],
)
def test_detector_settings_are_validated(option, value, exc) -> None:
    with pytest.raises(exc, match=option):
        gw.Watcher(nn.Linear(2, 1), **{option: value})


def test_freezing_a_layer_during_training_is_not_no_grad() -> None:
    import gradwatch as gw

    torch.manual_seed(0)
    x, y = torch.randn(64, 16), torch.randn(64, 1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with gw.watch(model, opt) as w:
        for k in range(20):
            if k == 10:  # freeze the first layer after a warm-up
                for p in model[0].parameters():
                    p.requires_grad_(False)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    assert w.findings == []


# ------------------------------------------------------------------------ when record findings arrive
def _nan_from(
    step_bad: int, steps: int, on_finding: str
) -> tuple[list[tuple[int, int]], BaseException | None]:
    """Train with a NaN loss scale from ``step_bad`` on; (loop step, finding step) of each warning."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    seen: list[tuple[int, int]] = []
    w = gw.watch(model, opt, on_finding=on_finding)
    raised = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for k in range(steps):
                opt.zero_grad()
                scale = float("nan") if k >= step_bad else 1.0
                (nn.functional.mse_loss(model(x), y) * scale).backward()
                opt.step()
                w.step()
                for c in caught:
                    if isinstance(c.message, gw.GradWatchWarning) and "[nonfinite_grad]" in str(c.message):
                        seen.append((k, int(str(c.message).split("step ")[1].split(":")[0])))
                caught.clear()
        except gw.GradientError as err:
            raised = err
            seen.append((k, -1))
        finally:
            w.close()
    return seen, raised


def test_record_findings_arrive_within_the_judge_batch_and_name_their_own_step():
    from gradwatch.detectors.suite import JUDGE_BATCH

    seen, raised = _nan_from(step_bad=2, steps=12, on_finding="warn")
    assert raised is None
    assert len(seen) == 1, seen
    loop_step, named = seen[0]
    assert named == 2  # the step where the NaN appeared, whenever it is judged
    assert 2 <= loop_step <= 2 + JUDGE_BATCH - 1


def test_with_on_finding_raise_each_record_is_judged_at_its_own_step():
    seen, raised = _nan_from(step_bad=2, steps=12, on_finding="raise")
    assert isinstance(raised, gw.GradientError) and "step 2" in str(raised)
    assert seen == [(2, -1)]  # raised at the boundary of step 2 itself
