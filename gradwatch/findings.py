"""Findings: what gradwatch reports (:class:`Finding`, its kinds), what is suppressed, and the report text."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from gradwatch.records import StepRecord

__all__ = ["FINDING_KINDS", "Finding", "Suppressions", "render_report", "short_list"]

#: Every finding kind gradwatch knows, most severe first (the order ``Watcher.report()`` uses).
FINDING_KINDS: tuple[str, ...] = (
    "nonfinite_grad",
    "missing_zero_grad",
    "discarded_grad",
    "no_grad",
    "not_updated",
    "ineffective_freeze",
    "clip_before_unscale",
    "ineffective_clip",
    "new_param",
    "lr_too_high",
    "exploding_grad",
    "vanishing_grad",
    "all_zero_grad",
)


@dataclass(frozen=True)
class Finding:
    """One gradient bug found in a training run.

    Attributes:
        kind: one of :data:`FINDING_KINDS` (the strings are API; new kinds may be added).
        step: the watcher step (0-based, or from ``start_step``) at which it was found.
        params: the parameter names involved, exactly as ``named_parameters()`` or the target
            mapping's keys give them.
        message: what was seen, where (parameter, step) and how to fix it.
    """

    kind: str
    step: int
    params: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] step {self.step}: {self.message}"


def short_list(names: Sequence[str], limit: int = 6) -> str:
    """``"a, b, c and 4 more"``: the first ``limit`` of ``names`` for a finding's message."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class Suppressions:
    """Findings not to report: ``(kind, parameter-name patterns)`` entries (``fnmatch`` style).

    Args:
        entries: the ``suppress`` option as :class:`~gradwatch.config.Config` normalised it.
    """

    def __init__(self, entries: Sequence[tuple[str, tuple[str, ...]]] = ()) -> None:
        self.entries: list[tuple[str, tuple[str, ...]]] = list(entries)

    def apply(self, finding: Finding) -> Finding | None:
        """The finding without its suppressed parameters; ``None`` when nothing of it is left to report."""
        if not self.entries:
            return finding
        kept = tuple(
            p
            for p in finding.params
            if not any(
                kind == finding.kind and any(fnmatch.fnmatchcase(p, pat) for pat in pats)
                for kind, pats in self.entries
            )
        )
        whole_kind = any(kind == finding.kind and "*" in pats for kind, pats in self.entries)
        if (finding.params and not kept) or (not finding.params and whole_kind):
            return None
        return finding if kept == finding.params else dataclasses.replace(finding, params=kept)


def render_report(
    findings: Sequence[Finding],
    skipped_steps: Sequence[int],
    record: StepRecord | None,
    shapes: Sequence[tuple[int, ...]],
) -> str:
    """The text of ``Watcher.report()``: findings (most severe first), AMP skips, a per-parameter table.

    Args:
        findings: every finding so far.
        skipped_steps: steps whose non-finite gradients were dropped without an optimizer step.
        record: the last recorded step (its table), or ``None``.
        shapes: each watched parameter's shape, in the record's parameter order.
    """
    lines: list[str] = []
    order = {k: i for i, k in enumerate(FINDING_KINDS)}
    ranked = sorted(findings, key=lambda f: (order.get(f.kind, len(order)), f.step))
    lines.append(f"gradwatch report: {len(ranked)} finding(s)")
    lines += [f"  ! {f}" for f in ranked]
    at = sorted(set(skipped_steps))
    if skipped_steps:
        lines.append(
            f"  {len(skipped_steps)} optimizer step(s) skipped because the gradients were not finite (an AMP "
            f"GradScaler lowering its scale), around steps {', '.join(map(str, at[:10]))}"
            + (" ..." if len(at) > 10 else "")
        )
    if record is None:
        lines.append("no step recorded yet")
        return "\n".join(lines)
    lines.append(
        f"step {record.step}: total grad norm {record.total_grad_norm:.4g}"
        + ("" if record.loss is None else f", loss {record.loss:.4g}")
    )
    header = ("parameter", "shape", "grad norm", "max |g|", "mean", "update ratio", "non-finite")
    rows = []
    for (name, s), shape in zip(record.params.items(), shapes):
        nonfinite = s.nan_count + s.inf_count
        rows.append(
            (
                name,
                "x".join(map(str, shape)) or "scalar",
                f"{s.grad_norm:.3e}" if s.has_grad or s.grad_norm else "no grad",
                f"{s.grad_max_abs:.3e}",
                f"{s.grad_mean:+.3e}",
                "-" if s.update_ratio is None else f"{s.update_ratio:.3e}",
                str(nonfinite) if nonfinite else "0",
            )
        )
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for r in [header, *rows]:
        lines.append(
            "  " + "  ".join(v.ljust(w) if c < 2 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
        )
    return "\n".join(lines)
