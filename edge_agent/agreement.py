"""Agreement between a baseline model and a candidate on the same frames: counted, summed, judged.

Pure. The *baseline* is the model whose answers are trusted today (the serving model in a
shadow; the previous model in probation's reverse shadow), the *candidate* the one on trial.
Labels are compared by **name**, so two models with different label orders or sets compare
correctly. Per frame, with ``b`` the baseline's label and ``c`` the candidate's:

- ``b`` unknown to the candidate (a label it dropped): not compared (``baseline_only``);
- ``b`` among the candidate manifest's declared ``intended_changes`` and ``c`` one of the labels
  declared for it (``"*"`` declares labels any old answer may become: the new package types a
  release exists for): an intended change, not compared (``intended``);
- ``c`` unknown to the baseline (a new package type): a disagreement when the baseline was
  confident about ``b`` (a known type called something else), else reported apart
  (``candidate_only``) and not compared;
- otherwise compared: agreement when ``b == c``.

Every frame also lands in the confusion counts ``confusion[b][c]`` — the evidence a person reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edge_agent.verdicts import Verdict, rate_at_least

_DIM_SAMPLES = 512  # dimension differences kept per window for the p95 (bounded memory)


class AgreementTally:
    """Counts one window of compared frames; not thread-safe (its owner locks)."""

    def __init__(
        self,
        baseline_labels: Sequence[str],
        candidate_labels: Sequence[str],
        *,
        confident: float,
        intended_changes: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.baseline_labels = list(baseline_labels)
        self.candidate_labels = list(candidate_labels)
        self._b_set = set(self.baseline_labels)
        self._c_set = set(self.candidate_labels)
        self.confident = confident
        self.intended = {k: set(v) for k, v in (intended_changes or {}).items()}
        self.reset()

    def disagrees(self, b_label: str, c_label: str) -> bool:
        """A plain disagreement on one frame: both labels known to both models, different, and not
        a declared intended change. A label only one model knows is never one (pure, no counting)."""
        if b_label == c_label or b_label not in self._c_set or c_label not in self._b_set:
            return False
        return c_label not in self.intended.get(b_label, ()) and c_label not in self.intended.get("*", ())

    def reset(self) -> None:
        self.frames = 0
        self.compared = 0
        self.agree = 0
        self.confident_compared = 0
        self.confident_agree = 0
        self.candidate_only = 0
        self.baseline_only = 0
        self.intended_frames = 0
        self.errors = 0
        self.nonfinite = 0
        self.skipped = 0
        self.confusion: dict[str, dict[str, int]] = {}
        self._cand_conf: list[float] = []
        self._dims: list[float] = []

    def add_error(self) -> None:
        self.errors += 1

    def add_skipped(self, n: int = 1) -> None:
        """Frames the shadow did not run on (share or CPU budget), for the record."""
        self.skipped += n

    def add(
        self,
        b_label: str,
        b_conf: float,
        b_dims: tuple[float, float] | None,
        c_label: str,
        c_conf: float,
        c_dims: tuple[float, float] | None,
        c_finite: bool = True,
    ) -> None:
        """One frame both models saw."""
        self.frames += 1
        if not c_finite:
            self.nonfinite += 1
            return
        row = self.confusion.setdefault(b_label, {})
        row[c_label] = row.get(c_label, 0) + 1
        self._cand_conf.append(c_conf)
        if b_dims is not None and c_dims is not None and len(self._dims) < _DIM_SAMPLES:
            self._dims.append(max(abs(b_dims[0] - c_dims[0]), abs(b_dims[1] - c_dims[1])))
        confident = b_conf >= self.confident
        if b_label not in self._c_set:
            self.baseline_only += 1
            return
        if c_label != b_label and (
            c_label in self.intended.get(b_label, ()) or c_label in self.intended.get("*", ())
        ):
            self.intended_frames += 1
            return
        if c_label not in self._b_set and not confident:
            self.candidate_only += 1
            return
        hit = b_label == c_label
        self.compared += 1
        self.agree += hit
        if confident:
            self.confident_compared += 1
            self.confident_agree += hit

    def block(self, role: str) -> dict[str, Any]:
        """The telemetry ``shadow`` block of this window (see :class:`edge_agent.messages.ShadowBlock`)."""
        conf = sorted(self._cand_conf)
        dims = sorted(self._dims)
        return {
            "role": role,
            "frames": self.frames,
            "compared": self.compared,
            "agree": self.agree,
            "confident_compared": self.confident_compared,
            "confident_agree": self.confident_agree,
            "candidate_only": self.candidate_only,
            "baseline_only": self.baseline_only,
            "intended": self.intended_frames,
            "errors": self.errors,
            "nonfinite": self.nonfinite,
            "skipped": self.skipped,
            "confusion": {b: dict(row) for b, row in self.confusion.items()},
            "candidate_confidence_mean": round(sum(conf) / len(conf), 6) if conf else 0.0,
            "candidate_confidence_p50": round(conf[len(conf) // 2], 6) if conf else 0.0,
            "dimension_diff_mm_mean": round(sum(dims) / len(dims), 3) if dims else None,
            "dimension_diff_mm_p95": round(dims[min(len(dims) - 1, int(0.95 * len(dims)))], 3)
            if dims
            else None,
        }


_COUNTS = (
    "frames",
    "compared",
    "agree",
    "confident_compared",
    "confident_agree",
    "candidate_only",
    "baseline_only",
    "intended",
    "errors",
    "nonfinite",
    "skipped",
)


def merge_blocks(blocks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum several windows' shadow blocks (counts and confusion add; the dimension p95 is the worst)."""
    out: dict[str, Any] = dict.fromkeys(_COUNTS, 0)
    confusion: dict[str, dict[str, int]] = {}
    p95: float | None = None
    dim_sum = 0.0
    dim_n = 0
    for b in blocks:
        for k in _COUNTS:
            out[k] += int(b.get(k, 0) or 0)
        for bl, row in (b.get("confusion") or {}).items():
            dst = confusion.setdefault(bl, {})
            for cl, n in row.items():
                dst[cl] = dst.get(cl, 0) + int(n)
        if b.get("dimension_diff_mm_p95") is not None:
            p95 = max(p95 or 0.0, float(b["dimension_diff_mm_p95"]))
            dim_sum += float(b.get("dimension_diff_mm_mean") or 0.0) * int(b.get("frames", 0) or 0)
            dim_n += int(b.get("frames", 0) or 0)
    out["confusion"] = confusion
    out["dimension_diff_mm_p95"] = p95
    out["dimension_diff_mm_mean"] = round(dim_sum / dim_n, 3) if dim_n else None
    return out


def judge_agreement(
    merged: Mapping[str, Any],
    *,
    min_agreement: float,
    min_frames: int,
    confidence: float = 0.95,
    max_dimension_diff_mm: float | None = None,
) -> list[Verdict]:
    """Verdicts on merged shadow blocks: agreement on shared labels (Wilson), and the dimension gate."""
    out = [
        rate_at_least(
            "agreement",
            int(merged.get("agree", 0)),
            int(merged.get("compared", 0)),
            minimum=min_agreement,
            min_n=min_frames,
            confidence=confidence,
        )
    ]
    if max_dimension_diff_mm is not None:
        p95 = merged.get("dimension_diff_mm_p95")
        n = int(merged.get("frames", 0))
        ev = {"dimension_diff_mm_p95": p95, "max_dimension_diff_mm": max_dimension_diff_mm}
        if p95 is None or n < min_frames:
            out.append(Verdict("dimension_diff", "inconclusive", "p95", n, "not enough frames", ev))
        elif p95 > max_dimension_diff_mm:
            out.append(
                Verdict(
                    "dimension_diff", "fail", "p95", n, f"p95 {p95:g} mm > {max_dimension_diff_mm:g} mm", ev
                )
            )
        else:
            out.append(
                Verdict(
                    "dimension_diff", "pass", "p95", n, f"p95 {p95:g} mm <= {max_dimension_diff_mm:g} mm", ev
                )
            )
    return out
