"""The face of `lora_jax.report` lists every module under `lora_jax/report/` and no other."""

from __future__ import annotations

import re

from conftest import ROOT

import lora_jax.report as report

REPORT = ROOT / "lora_jax" / "report"


def _modules() -> set[str]:
    """Every module under `lora_jax/report/`, dotted from there (`sections.compare`)."""
    paths = (p.relative_to(REPORT).with_suffix("") for p in REPORT.rglob("*.py"))
    return {".".join(p.parts) for p in paths if p.name != "__init__"}


def test_the_face_lists_every_report_module_and_no_other():
    listed = re.findall(r"^- `([\w.]+)`:", report.__doc__, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(listed)}"
    assert set(listed) == _modules()


def test_the_subpackages_list_their_modules():
    for sub in ("sections", "render"):
        doc = __import__(f"lora_jax.report.{sub}", fromlist=["_"]).__doc__
        named = set(re.findall(r"`(\w+)`", doc))
        here = {m.split(".", 1)[1] for m in _modules() if m.startswith(f"{sub}.")}
        assert here <= named, f"{sub}/__init__.py leaves out {sorted(here - named)}"


def test_the_lazy_exports_resolve():
    assert all(getattr(report, name) is not None for name in report.__all__)
