"""The report of `python -m experiments.analyze --adapters`: the audit, the rank advice and,
with a base, the rank analysis against W; imports no JAX and no sweep report."""

from __future__ import annotations

from pathlib import Path

from lora_jax.audit.measure import AUDIT_FILE
from lora_jax.report.audit_section import audit_sections
from lora_jax.report.document import Document, ReportResult, Section, write_document


def make_adapters_report(out: str | Path) -> ReportResult:
    """`report.md` and `report.html` of an `--adapters` analysis in `out`: the audit
    (`audit.json`, and the rank advice if written) and, with a base, the rank analysis
    against W (`analysis.json`)."""
    out = Path(out)
    if not (out / AUDIT_FILE).is_file():
        raise FileNotFoundError(f"{out} holds no {AUDIT_FILE}; run the audit first.")
    sections = audit_sections(out)
    from lora_jax.report.rank_analysis import load_analysis, rank_analysis  # figures: JAX

    analysis = load_analysis(out)
    if analysis is not None and "adapters" in analysis:
        base = analysis["base"]
        sections.append(
            Section(
                "Rank analysis against W",
                [
                    f"W read from `{base['checkpoint']}` ({base['family']}).",
                    *rank_analysis(out),
                ],
            )
        )
    doc = Document("lora_jax report: LoRA adapters", sections)
    return ReportResult(
        *write_document(doc, out), [], wandb_message="W&B report: not built for adapters."
    )
