"""``gradwatch report LOGDIR``: findings and per-layer tables read back from real event files."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch import cli

pytest.importorskip("tensorboard")


def _train(logdir: pathlib.Path, zero_grad: bool, steps: int = 6) -> gw.Watcher:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gw.GradWatchWarning)
        with gw.watch(model, opt, logdir=str(logdir)) as w:
            for _ in range(steps):
                if zero_grad:
                    opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                opt.step()
    return w


def test_report_reads_back_the_findings_and_last_statistics(tmp_path: pathlib.Path, capsys) -> None:
    w = _train(tmp_path / "buggy", zero_grad=False)
    assert [f.kind for f in w.findings] == ["missing_zero_grad"]
    code = cli.main(["report", str(tmp_path / "buggy"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # findings: a CI job fails
    (run,) = out["runs"].values()
    (finding,) = run["findings"]
    expected = w.findings[0]
    assert finding == {
        "kind": expected.kind,
        "step": expected.step,
        "params": list(expected.params),
        "message": expected.message,
    }
    last = w.history[-1]
    assert run["last_step"] == last.step
    for name, s in last.params.items():
        got = run["parameters"][name]
        # TensorBoard stores scalars as float32
        assert got["grad_norm"] == pytest.approx(s.grad_norm, rel=1e-6)
        assert got["update_ratio"] == pytest.approx(s.update_ratio, rel=1e-6)
    for layer, norm in last.layers.items():
        assert run["layers"][layer or "<root>"] == pytest.approx(norm, rel=1e-6)
    assert run["total_grad_norm"] == pytest.approx(last.total_grad_norm, rel=1e-6)


def test_a_clean_run_exits_0_and_the_text_names_every_parameter(tmp_path: pathlib.Path, capsys) -> None:
    w = _train(tmp_path / "clean", zero_grad=True)
    assert w.findings == []
    assert cli.main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "0 finding(s)" in text
    for name in w.names:
        assert name in text
    assert "layer 0" in text and "layer 2" in text


def test_several_runs_below_one_folder(tmp_path: pathlib.Path, capsys) -> None:
    _train(tmp_path / "a", zero_grad=True)
    _train(tmp_path / "b", zero_grad=False)
    assert cli.main(["report", str(tmp_path), "--json"]) == 1
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert sorted(runs) == ["a", "b"]
    assert runs["a"]["findings"] == [] and len(runs["b"]["findings"]) == 1


def test_a_message_with_double_dashes_survives_the_html_comment(tmp_path: pathlib.Path, capsys) -> None:
    from gradwatch.sinks.tensorboard import TensorBoardSink

    sink = TensorBoardSink(str(tmp_path))
    finding = gw.Finding("no_grad", 3, ("a.b",), "run with --no-cache -- then <!-- see --> here")
    sink.write_finding(finding)
    sink.close()
    assert cli.main(["report", str(tmp_path), "--json"]) == 1
    (run,) = json.loads(capsys.readouterr().out)["runs"].values()
    assert run["findings"] == [{"kind": "no_grad", "step": 3, "params": ["a.b"], "message": finding.message}]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing", "is not a folder"),
        (lambda p: p, "no TensorBoard event files"),
    ],
    ids=["no-folder", "no-events"],
)
def test_usage_errors_exit_2_with_a_reason(tmp_path: pathlib.Path, capsys, make, match) -> None:
    assert cli.main(["report", str(make(tmp_path))]) == 2
    assert match in capsys.readouterr().err


def test_the_installed_command_and_python_m(tmp_path: pathlib.Path) -> None:
    _train(tmp_path, zero_grad=False)
    exe = pathlib.Path(sys.executable).with_name("gradwatch")
    commands = [[sys.executable, "-m", "gradwatch", "report", str(tmp_path)]]
    if exe.exists():  # the console script of the installed package
        commands.append([str(exe), "report", str(tmp_path)])
    for command in commands:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 1, out.stderr
        assert "[missing_zero_grad]" in out.stdout


def test_a_re_run_into_the_same_logdir_is_reported_from_its_newest_event_file(
    tmp_path: pathlib.Path, capsys
) -> None:
    import time

    _train(tmp_path, zero_grad=False)  # the buggy run
    time.sleep(1.1)  # event file names carry the creation time in seconds
    _train(tmp_path, zero_grad=True)  # fixed, same folder
    assert cli.main(["report", str(tmp_path)]) == 0  # the CI gate passes once the bug is fixed
    assert "1 older event file(s)" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path), "--all-files"]) == 1


def test_folders_of_other_writers_are_left_out(tmp_path: pathlib.Path, capsys) -> None:
    from torch.utils.tensorboard import SummaryWriter

    _train(tmp_path / "ours", zero_grad=True)
    other = SummaryWriter(str(tmp_path / "theirs"))
    other.add_scalar("train/loss", 1.0, 0)
    other.close()
    assert cli.main(["report", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["runs"]) == ["ours"]
    assert cli.main(["report", str(tmp_path / "theirs")]) == 2
    assert "no gradwatch data" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_report_quietly(tmp_path: pathlib.Path) -> None:
    _train(tmp_path, zero_grad=False)
    out = subprocess.run(
        f"{sys.executable} -m gradwatch report {tmp_path} | head -1",
        shell=True, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "BrokenPipeError" not in out.stderr and out.stdout.startswith("run .")
