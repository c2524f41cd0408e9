"""``gradwatch report LOGDIR``: the findings and a per-layer table of a run, read from its event files.

Reads the TensorBoard event files gradwatch wrote (``logdir=``) with TensorBoard's own reader
(``tensorboard.backend.event_processing.event_multiplexer``), one run per folder that holds event
files, and prints for each run its findings and a table of the last recorded step: per parameter its
gradient norm (``grad_norm/<name>``), its update-to-weight ratio (``update_ratio/<name>``) and its NaN/Inf
counts, then per layer its gradient norm (``layer_grad_norm/<layer>``). ``--json`` prints the same as one
JSON object. A folder written to more than once (a re-run into the same ``logdir``) is read from its
newest event file only (``--all-files`` reads them all); folders with other writers' events and no
gradwatch data are left out. Exit status: 0 when no run has a finding, 1 when one has (so a CI job can
gate on it), 2 for a usage error (no such folder, no gradwatch event files, TensorBoard not installed).

Usage::

    gradwatch report runs/exp1            # or: python -m gradwatch report runs/exp1
    gradwatch report runs/ --json > report.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["load_run", "main"]

#: Finding texts carry the finding itself as JSON in an HTML comment (TensorBoard's Text tab does not
#: show comments): ``<!-- gradwatch-finding {...} -->``.
_FINDING_JSON = re.compile(r"<!-- gradwatch-finding (\{.*\}) -->", re.DOTALL)
#: Older texts: ``**kind**: message``.
_FINDING_TEXT = re.compile(r"^\*\*(\w+)\*\*:\s*(.*)$", re.DOTALL)

_TEXT_TAG = "gradwatch/findings/text_summary"  # what SummaryWriter.add_text("gradwatch/findings") writes


def _decode(text: str, step: int) -> dict[str, Any]:
    """A finding from its TensorBoard text: the exact JSON where present, else parsed from the words."""
    found = _FINDING_JSON.search(text)
    if found:
        return dict(json.loads(found.group(1)))
    plain = _FINDING_TEXT.match(text.strip())
    if plain:
        return {"kind": plain.group(1), "step": step, "params": [], "message": plain.group(2).strip()}
    return {"kind": "unknown", "step": step, "params": [], "message": text.strip()}


def load_run(accumulator: Any) -> dict[str, Any]:
    """The findings and the last recorded statistics of one run (a loaded ``EventAccumulator``).

    Returns:
        ``{"findings": [...], "last_step": int | None, "parameters": {name: {...}}, "layers": {...},
        "total_grad_norm": float | None}``; each finding ``{"kind", "step", "params", "message"}``
        (oldest first); each parameter ``{"grad_norm", "update_ratio", "nan_count", "inf_count"}`` at
        the last step that recorded it (``None`` where never written).
    """
    tags = accumulator.Tags()
    findings = []
    if _TEXT_TAG in tags.get("tensors", []):
        for event in accumulator.Tensors(_TEXT_TAG):
            for raw in event.tensor_proto.string_val:
                findings.append(_decode(raw.decode("utf-8", "replace"), int(event.step)))
    findings.sort(key=lambda f: f["step"])
    last: dict[str, tuple[int, float]] = {}
    for tag in tags.get("scalars", []):
        events = accumulator.Scalars(tag)
        if events:
            last[tag] = (int(events[-1].step), float(events[-1].value))
    last_step = max((step for step, _ in last.values()), default=None)
    parameters: dict[str, dict[str, Any]] = {}
    for tag, (_, value) in last.items():
        prefix, _, name = tag.partition("/")
        if (
            prefix in ("grad_norm", "update_ratio", "nan_count", "inf_count")
            and name
            and tag != "grad_norm/total"
        ):
            entry = parameters.setdefault(
                name, {"grad_norm": None, "update_ratio": None, "nan_count": None, "inf_count": None}
            )
            entry[prefix] = value
    layers = {
        tag.partition("/")[2]: value for tag, (_, value) in last.items() if tag.startswith("layer_grad_norm/")
    }
    total = last.get("grad_norm/total")
    return {
        "findings": findings,
        "last_step": last_step,
        "total_grad_norm": None if total is None else total[1],
        "parameters": parameters,
        "layers": layers,
    }


def _event_files(folder: str) -> list[str]:
    """The event files directly in ``folder``, oldest first (by the creation time in their names)."""

    def created(name: str) -> tuple[int, str]:
        parts = name.split(".")  # events.out.tfevents.<unix time>.<host>...
        return (int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0, name)

    names = [n for n in os.listdir(folder) if "tfevents" in n and os.path.isfile(os.path.join(folder, n))]
    return [os.path.join(folder, n) for n in sorted(names, key=created)]


def _is_gradwatch(data: dict[str, Any]) -> bool:
    return bool(data["findings"]) or data["total_grad_norm"] is not None


def _runs(logdir: str, all_files: bool = False) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Every gradwatch run below ``logdir`` (a folder with event files), loaded.

    A folder written to more than once (a re-run into the same ``logdir``) holds several event files:
    only the newest is read, unless ``all_files``. Returns the runs, the number of older event files
    left out, and the number of folders with event files but no gradwatch data (other writers' runs).
    """
    from tensorboard.backend.event_processing import event_accumulator, io_wrapper

    guidance = {event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0, event_accumulator.HISTOGRAMS: 1}
    runs: dict[str, dict[str, Any]] = {}
    older = others = 0
    for folder in sorted(io_wrapper.GetLogdirSubdirectories(logdir)):
        files = _event_files(folder)
        if not files:
            continue
        if not all_files:
            older += len(files) - 1
        accumulator = event_accumulator.EventAccumulator(folder if all_files else files[-1], guidance)
        accumulator.Reload()
        data = load_run(accumulator)
        if not _is_gradwatch(data):
            others += 1
            continue
        run = os.path.relpath(folder, logdir)
        runs["" if run == "." else run] = data
    return runs, older, others


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3e}"


def _format(runs: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for run, data in runs.items():
        lines.append(
            f"run {run or '.'}: {len(data['findings'])} finding(s), last recorded step {data['last_step']}"
        )
        for f in data["findings"]:
            lines.append(f"  ! [{f['kind']}] step {f['step']}: {f['message']}")
        if data["total_grad_norm"] is not None:
            lines.append(f"  total grad norm {_number(data['total_grad_norm'])}")
        header = ("parameter", "grad norm", "update ratio", "NaN", "Inf")
        rows = [
            (
                name,
                _number(p["grad_norm"]),
                _number(p["update_ratio"]),
                "-" if p["nan_count"] is None else str(int(p["nan_count"])),
                "-" if p["inf_count"] is None else str(int(p["inf_count"])),
            )
            for name, p in data["parameters"].items()
        ]
        if data["layers"]:
            rows.append(("", "", "", "", ""))
            rows += [
                (f"layer {layer}", _number(value), "", "", "") for layer, value in data["layers"].items()
            ]
        if rows:
            widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
            for r in [header, *rows]:
                cells = (v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
                lines.append(("  " + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0: no finding, 1: findings, 2: usage error)."""
    parser = argparse.ArgumentParser(
        prog="gradwatch", description="Read what gradwatch wrote to TensorBoard."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="print the findings and a per-layer table of each run in LOGDIR")
    report.add_argument(
        "logdir", help="a folder gradwatch wrote event files to (logdir=), or a folder of them"
    )
    report.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    report.add_argument(
        "--all-files",
        action="store_true",
        help="read every event file of a folder written to more than once (default: the newest only)",
    )
    args = parser.parse_args(argv)
    if not os.path.isdir(args.logdir):
        print(f"gradwatch report: {args.logdir!r} is not a folder", file=sys.stderr)
        return 2
    try:
        runs, older, others = _runs(args.logdir, args.all_files)
    except ModuleNotFoundError as err:
        print(
            f"gradwatch report needs TensorBoard ({err}); "
            f"install it with: pip install 'gradwatch[tensorboard]'",
            file=sys.stderr,
        )
        return 2
    if not runs:
        what = "gradwatch data" if others else "TensorBoard event files"
        print(f"gradwatch report: no {what} under {args.logdir!r}", file=sys.stderr)
        return 2
    try:
        if args.json:
            out = {"logdir": args.logdir, "runs": runs, "older_event_files_ignored": older}
            print(json.dumps(out, indent=2))
        else:
            print(_format(runs))
            if older:
                print(
                    f"({older} older event file(s) of re-runs into the same folder ignored; "
                    f"--all-files reads them)"
                )
            if others:
                print(f"({others} folder(s) with other writers' events and no gradwatch data left out)")
        sys.stdout.flush()
    except BrokenPipeError:  # `gradwatch report runs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if any(data["findings"] for data in runs.values()) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
