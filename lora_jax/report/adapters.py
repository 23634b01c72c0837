"""The report of `python -m experiments.analyze --adapters`: the audit, the rank advice and,
with a base, dW against W by matrix type; imports no JAX and no sweep report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_jax.audit.measure import by_type
from lora_jax.report.render.document import Document, ReportResult, Section, Table, write_document
from lora_jax.report.sections.audit_section import audit_sections, ordered, stats_range
from lora_jax.runs.layout import ANALYSIS_FILE, AUDIT_FILE

# per matrix: what the by-type table shows, from analysis.json's entry of the matrix
AGAINST_W = {
    "amplification": lambda m: m["dw_vs_w"]["amplification"],
    "proj_ratio": lambda m: _ratio(m["dw_vs_w"]["proj_dw"], m["dw_vs_w"]["proj_random_rms"]),
    "phi_input": lambda m: m["dw_vs_w"]["phi_input"],
    "intruders": lambda m: m["intruders"],
}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _against_w_table(name: str, matrices: dict[str, dict]) -> Table:
    flat = {k: {q: get(m) for q, get in AGAINST_W.items()} for k, m in matrices.items()}
    types = by_type(flat, tuple(AGAINST_W))
    rows = [
        [
            t,
            str(types[t]["layers"]),
            stats_range(types[t]["amplification"], 1),
            stats_range(types[t]["proj_ratio"], 2),
            stats_range(types[t]["phi_input"], 2),
            str(sum(flat[k]["intruders"] for k in flat if k.split("/")[1] == t)),
        ]
        for t in ordered(types)
    ]
    return Table(
        [
            "matrix",
            "layers",
            "amplification",
            "||U^T W V|| / random",
            "phi(W, dW) input",
            "intruders",
        ],
        rows,
        caption=f"{name}: median [min, max] over layers; intruders summed over layers.",
    )


EXPLAINED = (
    "Amplification = ||dW||_F / ||U^T W V||_F with U, V dW's top-r directions (Hu et al. 2021, "
    "Table 7: large = dW amplifies directions W does not emphasise); ||U^T W V|| against random "
    "directions' RMS (1 = no more aligned with W than chance); phi(r, r) between W's and dW's "
    "top-r input directions; intruders: singular vectors among W + dW's top 10 with |cos| < 0.5 "
    "to every singular vector of W (Shuttleworth et al. 2024; PEFT's "
    f"`reduce_intruder_dimension`). Per matrix: {ANALYSIS_FILE}."
)


def _cache_line(base: dict[str, Any]) -> str:
    cache = base.get("svd_cache")
    if not cache:
        return ""
    where = f" (saved in `{cache['dir']}`)" if cache["dir"] else " (not saved: --svd-cache none)"
    return (
        f" W's SVDs: {cache['reused']} read back, {cache['computed']} computed{where}; the next "
        "analysis on this base reads them."
    )


def make_adapters_report(out: str | Path) -> ReportResult:
    """`report.md` and `report.html` of an `--adapters` analysis in `out`: the audit
    (`audit.json`, and the rank advice if written) and, with a base, dW against W
    (`analysis.json`) by matrix type."""
    out = Path(out)
    if not (out / AUDIT_FILE).is_file():
        raise FileNotFoundError(f"{out} holds no {AUDIT_FILE}; run the audit first.")
    sections = audit_sections(out)
    if (out / ANALYSIS_FILE).is_file():
        analysis = json.loads((out / ANALYSIS_FILE).read_text())
        base = analysis["base"]
        intro = f"W read from `{base['checkpoint']}` ({base['family']}).{_cache_line(base)}"
        intro += f" {EXPLAINED}"
        tables = [_against_w_table(n, a["adapters"]) for n, a in analysis["adapters"].items()]
        sections.append(Section("dW against W", [intro, *tables]))
    doc = Document("lora_jax report: LoRA adapters", sections)
    return ReportResult(
        *write_document(doc, out), [], wandb_message="W&B report: not built for adapters."
    )
