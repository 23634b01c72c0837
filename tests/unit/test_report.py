"""`python -m experiments.report`: cells, the paper's tables beside ours, local and W&B reports.

Every test builds a small sweep folder in tmp_path (run folders with metrics.json,
config.yaml, history.jsonl; analysis.json and figures where needed) with known values, so
nothing depends on outputs/ or on a network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import wandb_workspaces.reports.v2 as wr
from conftest import SYNTHETIC_LAYERS as LAYERS
from conftest import write_run
from omegaconf import OmegaConf
from PIL import Image

from experiments import report as report_cli
from lora_jax.report import ReportInputError, group_cells, make_report, paper
from lora_jax.report.render.document import Table
from lora_jax.report.render.format import fmt_stats
from lora_jax.report.sections import compare
from lora_jax.runs.record import RunFolderError, read_runs

RANKS = (1, 2, 4, 8)
TARGETS = (("q",), ("q", "v"))
SEEDS = (0, 1, 2)


def _values() -> dict[tuple[tuple[str, ...], int, int], tuple[float, float]]:
    """(targets, rank, seed) -> (best, final) accuracy, fixed by a seeded generator."""
    rng = np.random.default_rng(0)
    out = {}
    for t in TARGETS:
        for r in RANKS:
            for s in SEEDS:
                best = float(rng.uniform(0.6, 0.9))
                out[(t, r, s)] = (best, best - float(rng.uniform(0.0, 0.02)))
    return out


def write_grid(sweep: Path, **kw) -> dict:
    """Targets q and qv x ranks 1..8 x seeds 0..2, a head-only run and an unfinished one."""
    values = _values()
    for (t, r, s), (best, final) in values.items():
        write_run(
            sweep,
            f"targets={''.join(t)},rank={r},seed={s}",
            rank=r,
            targets=t,
            seed=s,
            best=best,
            final=final,
            **kw,
        )
    write_run(sweep, "rank=0", rank=0, best=0.7, final=0.7, **kw)
    write_run(sweep, "rank=16,unfinished", rank=16, status="running", **kw)
    return values


def write_figures(sweep: Path, stems: list[str]) -> None:
    (sweep / "figures").mkdir(exist_ok=True)
    for stem in stems:
        Image.new("RGB", (8, 6), (30, 120, 200)).save(sweep / "figures" / f"{stem}.png")


@pytest.fixture
def offline(monkeypatch):
    """W&B offline, and any use of its API (a network call) fails the test."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")

    def no_api(*a, **k):
        raise AssertionError("the W&B API was used offline")

    monkeypatch.setattr(wandb, "Api", no_api)
    monkeypatch.setattr(wr.Report, "save", lambda self, *a, **k: no_api())


def test_cells_group_every_axis_but_seed_and_aggregate(tmp_path):
    values = write_grid(tmp_path)
    write_run(tmp_path, "alpha=16", rank=4, targets=("q", "v"), alpha=16.0, best=0.5)
    cells = group_cells(read_runs(tmp_path))
    # 2 target sets x 4 ranks, the head-only run, the alpha=16 run; the unfinished run is left out
    assert len(cells) == 2 * 4 + 2
    for cell in cells:
        if cell.rank == 0 or cell.axes["alpha"] == 16.0:
            assert cell.stats().n == 1
            continue
        assert cell.seeds == SEEDS
        for at, i in (("best", 0), ("final", 1)):
            expected = [values[(cell.targets, cell.rank, s)][i] for s in SEEDS]
            st = cell.stats(at)
            assert st.values == tuple(expected)
            assert st.median == pytest.approx(np.median(expected))
            assert (st.min, st.max) == (min(expected), max(expected))


def test_stats_on_hand_values(tmp_path):
    for seed, acc in enumerate((0.70, 0.74, 0.71)):
        write_run(tmp_path, f"seed={seed}", rank=2, seed=seed, best=acc, final=acc - 0.01)
    (cell,) = group_cells(read_runs(tmp_path))
    st = cell.stats("best")
    assert (st.n, st.median, st.min, st.max) == (3, 0.71, 0.70, 0.74)
    assert fmt_stats(st, "accuracy") == "71.00 [70.00–74.00] (n=3)"
    assert cell.stats("final").median == pytest.approx(0.70)


def test_metric_measured_only_at_the_end_is_read_at_the_end(tmp_path):
    # BLEU: `best` holds None when the best-loss step is not the last one, and it is logged once.
    write_run(tmp_path, "a", rank=4, main="bleu", task="e2e", best=None, final=31.3, evals=1)
    write_run(
        tmp_path, "b", rank=4, seed=1, main="bleu", task="e2e", best=30.0, final=30.0, evals=1
    )
    (cell,) = group_cells(read_runs(tmp_path))
    assert cell.end_only
    assert cell.stats("best").values == (31.3, 30.0) == cell.stats("final").values


def _row(table: Table, *labels: str) -> list[str]:
    return next(r for r in table.rows if tuple(r[: len(labels)]) == labels)


def test_table6_layout_puts_paper_and_ours_in_the_right_cells(tmp_path):
    values = write_grid(tmp_path)
    blocks = compare.table6(group_cells(read_runs(tmp_path)))
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert table.columns == ["weight type", "source", "r=1", "r=2", "r=4", "r=8", "r=64"]
    col = {c: i for i, c in enumerate(table.columns)}
    assert _row(table, "Wq,Wv", "paper WikiSQL")[col["r=8"]] == "73.8"
    assert _row(table, "Wq", "paper MultiNLI")[col["r=4"]] == "91.1"
    assert _row(table, "Wq,Wk,Wv,Wo", "paper WikiSQL")[col["r=1"]] == "74.1"
    best = [100 * values[(("q", "v"), 4, s)][0] for s in SEEDS]
    assert _row(table, "Wq,Wv", "ours")[col["r=4"]] == (
        f"{np.median(best):.2f} [{min(best):.2f}–{max(best):.2f}] (n=3)"
    )
    assert _row(table, "Wq,Wv", "ours")[col["r=64"]] == "-"  # not run
    assert set(_row(table, "Wq,Wk,Wv,Wo", "ours")[2:]) == {"-"}
    assert any("head only (r=0): 70.00 (n=1)" in b for b in blocks if isinstance(b, str))
    assert any("GPT-3 175B" in b and "`minilm`" in b for b in blocks if isinstance(b, str))


def test_local_report_markdown_and_self_contained_html(tmp_path, offline):
    sweep = tmp_path / "sw"
    write_grid(sweep)
    write_figures(sweep, ["phi_rank_r1_vs_r8", "phi_seed_s0_vs_s1"])
    (sweep / "analysis.json").write_text(json.dumps(_analysis(sweep)))
    result = make_report(sweep, ["table6", "fig3", "fig4", "table7"], use_wandb=False)
    assert result.markdown == sweep / "report.md"
    md, page = result.markdown.read_text(), result.html.read_text()
    assert "](figures/metric_vs_rank.png)" in md
    assert (sweep / "figures" / "metric_vs_rank.png").exists()
    assert "](figures/phi_rank_r1_vs_r8.png)" in md
    # our plot, the two analysis figures in "Rank analysis", and again beside Figs. 3 and 4
    assert page.count('src="data:image/png;base64,') == 5
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "<td>73.8</td>" in page  # tables rendered from the same data
    assert result.wandb_message == "W&B report skipped (--no-wandb)."


def _analysis(sweep: Path) -> dict:
    """analysis.json as `analyze_runs` writes it, with known phi grids and Table 7 numbers."""

    def run(name, rank, proj):
        return {
            "run_dir": str(sweep / name),
            "rank": rank,
            "adapters": {
                f"layer_{i}/{t}": {
                    "rank": rank,
                    "shape": [200, 200],
                    "singular_values": [1.0] * rank,
                    "stable_rank": 1.0,
                    "effective_rank": float(rank),
                    "energy_rank_90": rank,
                    "energy_rank_99": rank,
                    "dw_vs_w": {
                        "r": float(rank),
                        "proj_dw": proj[i],
                        "proj_w": 5.0,
                        "proj_random": 0.1,
                        "w_norm": 30.0,
                        "dw_norm": 2.0,
                        "amplification": 2.0 / proj[i],
                    },
                }
                for i in range(LAYERS)
                for t in ("q", "v")
            },
        }

    grid = lambda top, r: [[top if (i, j) == (0, 0) else 0.1 for j in range(r)] for i in range(r)]  # noqa: E731
    return {
        "runs": {
            "targets=qv,rank=1,seed=0": run("targets=qv,rank=1,seed=0", 1, [0.2, 0.4]),
            "targets=qv,rank=8,seed=0": run("targets=qv,rank=8,seed=0", 8, [0.5, 0.7]),
        },
        "rank_pairs": [
            {
                "runs": [
                    str(sweep / "targets=qv,rank=1,seed=0"),
                    str(sweep / "targets=qv,rank=8,seed=0"),
                ],
                "ranks": [1, 8],
                "phi": {
                    "layer_0/q": grid(0.6, 1),
                    "layer_1/q": grid(0.2, 1),
                    "layer_0/v": grid(0.3, 1),
                    "layer_1/v": grid(0.1, 1),
                },
                "figure": "elsewhere/figures/phi_rank_r1_vs_r8.png",
            }
        ],
        "seed_pairs": [
            {
                "runs": [
                    str(sweep / "targets=qv,rank=8,seed=0"),
                    str(sweep / "targets=qv,rank=8,seed=1"),
                ],
                "seeds": [0, 1],
                "phi": {"layer_0/q": grid(0.9, 2), "layer_0/v": grid(0.1, 2)},
                "random_baseline": grid(0.01, 2),
                "expected_random_mean": 0.005,
                "figure": str(sweep / "figures" / "phi_seed_s0_vs_s1.png"),
            }
        ],
    }


def test_analysis_tables_read_analysis_json(tmp_path):
    write_grid(tmp_path)
    (tmp_path / "analysis.json").write_text(json.dumps(_analysis(tmp_path)))
    cells = group_cells(read_runs(tmp_path))
    from lora_jax.report.sections import analysis_tables

    (t7,) = [b for b in analysis_tables.table7(cells, tmp_path) if isinstance(b, Table)]
    assert t7.columns[:4] == ["quantity", "paper r=4", "paper r=64", "ours Wq r=1"]
    dw = t7.rows[0]
    assert dw[1:3] == ["0.32", "1.90"]
    assert dw[3] == "0.3 [0.2–0.4] (n=2)"  # median over the two layers of Wq at r=1
    assert t7.rows[-1][2] == "≈2"
    f3 = analysis_tables.fig3(cells, tmp_path)
    (t3,) = [b for b in f3 if isinstance(b, Table)]
    assert _row(t3, "r=1 vs r=8 (Wq,Wv)", "Wq")[2:4] == ["0.400 [0.200–0.600] (n=2)", "1 of 2"]
    f4 = analysis_tables.fig4(cells, tmp_path)
    assert any("as in the paper" in b for b in f4 if isinstance(b, str))  # Wq shares more


def test_wandb_report_is_built_offline_and_not_saved(tmp_path, offline, monkeypatch, capsys):
    sweep = tmp_path / "sw"
    write_grid(sweep, paper_items=["table6"])
    stems = ["phi_rank_r1_vs_r8", "spectrum_r8"]
    write_figures(sweep, stems)
    monkeypatch.setattr(sys, "argv", ["report", str(sweep), "--out", str(tmp_path / "out")])
    report_cli.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == [
        str(tmp_path / "out" / "report.md"),
        str(tmp_path / "out" / "report.html"),
    ]
    assert lines[-3].startswith("W&B report not created: W&B is offline")
    assert (
        "WANDB_MODE=online" in lines[-3]
        and "wandb login" in lines[-3]
        and "wandb sync" in lines[-3]
    )

    result = make_report(sweep, out=tmp_path / "out")
    rep = result.wandb_report
    assert isinstance(rep, wr.Report) and result.paper == ["table6"]
    assert (rep.project, rep.entity) == ("lora_jax", "")
    grids = [b for b in rep.blocks if isinstance(b, wr.PanelGrid)]
    panels = [p for g in grids for p in g.panels]
    (scatter,) = [p for p in panels if isinstance(p, wr.ScatterPlot)]
    assert scatter.x == wr.Config("lora.rank") and scatter.y == wr.SummaryMetric("best/accuracy")
    assert any(isinstance(p, wr.BarPlot) and p.groupby == wr.Config("lora.rank") for p in panels)
    assert any(isinstance(p, wr.RunComparer) for p in panels)
    media = {k for p in panels if isinstance(p, wr.MediaBrowser) for k in p.media_keys}
    assert media == set(stems)
    lines_y = {tuple(p.y) for p in panels if isinstance(p, wr.LinePlot)}
    assert tuple(f"spectrum/layer_{i}/v/effective_rank" for i in range(LAYERS)) in lines_y
    runsets = [rs for g in grids for rs in g.runsets]
    assert {rs.filters for rs in runsets} == {
        "Group = 'sw' and JobType = 'train'",
        "Group = 'sw' and JobType = 'analysis'",
    }
    assert any(rs.groupby == ["config.lora.targets", "config.lora.rank"] for rs in runsets)
    markdown = "\n".join(b.text for b in rep.blocks if isinstance(b, wr.MarkdownBlock))
    assert "| Wq,Wv | paper WikiSQL | 73.4 |" in markdown
    # The whole spec serialises without a network (the API is patched to fail above).
    spec = json.loads(rep._to_model().spec.model_dump_json(by_alias=True))
    assert len(spec["blocks"]) == len(rep.blocks) + 2  # wandb-workspaces pads with paragraphs


def test_wandb_group_with_equals_sign_keeps_its_filter(tmp_path, offline):
    write_run(tmp_path, "a", rank=4, logger={"group": "rank=1,2"})
    rep = make_report(tmp_path).wandb_report
    runset = next(b for b in rep.blocks if isinstance(b, wr.PanelGrid)).runsets[0]
    leaves = runset._to_model().filters["filters"]
    assert [(f["key"]["name"], f["value"]) for f in leaves] == [
        ("group", "rank=1,2"),
        ("jobType", "train"),
    ]


def test_wandb_report_is_saved_when_online(tmp_path, monkeypatch):
    import wandb

    saved = []
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "Api", lambda: type("Api", (), {"default_entity": "me"})())
    monkeypatch.setattr(wr.Report, "save", lambda self, *a, **k: saved.append(self) or self)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: "https://wandb.example/report"))
    write_run(tmp_path, "a", rank=4)
    result = make_report(tmp_path)
    assert saved == [result.wandb_report] and result.wandb_report.entity == "me"
    assert result.wandb_message == "W&B report: https://wandb.example/report"


def test_paper_items_from_config_and_old_sweeps(tmp_path, offline):
    write_run(tmp_path / "new", "a", rank=4, paper_items=["fig3", "table6"])
    write_run(tmp_path / "old", "a", rank=4)  # made before `paper:` existed
    assert make_report(tmp_path / "new", use_wandb=False).paper == ["fig3", "table6"]
    old = make_report(tmp_path / "old", use_wandb=False)
    assert old.paper == [] and "--paper table6" in old.markdown.read_text()
    assert make_report(tmp_path / "old", ["table6,table18"], use_wandb=False).paper == [
        "table6",
        "table18",
    ]


@pytest.mark.parametrize(
    "case, args, expected",
    [
        ("missing", [], ["does not exist", "experiments.sweep"]),
        ("unfinished", [], ["holds no finished run", "hydra.sweep.dir="]),
        (
            "finished",
            ["--paper", "table99"],
            ["'table99'", "allowed: table2", "table18", "--paper table6"],
        ),
        ("bad_config", [], ["'tbl6'", "config.yaml", "allowed:"]),
    ],
)
def test_bad_input_fails_before_work(tmp_path, monkeypatch, capsys, case, args, expected):
    sweep = tmp_path / case
    if case == "unfinished":
        write_run(sweep, "a", rank=4, status="running")
    elif case == "finished":
        write_run(sweep, "a", rank=4)
    elif case == "bad_config":
        write_run(sweep, "a", rank=4, paper_items=["tbl6"])
    monkeypatch.setattr(sys, "argv", ["report", str(sweep), *args])
    with pytest.raises(SystemExit) as exit_info:
        report_cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(e in err for e in expected), err
    assert not (sweep / "report.md").exists()


def test_report_input_errors_are_value_errors(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        make_report(tmp_path / "nope")
    assert issubclass(ReportInputError, ValueError) and issubclass(RunFolderError, ValueError)


def test_paper_numbers_match_their_sources():
    assert paper.TABLE6["MultiNLI"][("q", "k", "v", "o")] == {
        1: 91.2,
        2: 91.7,
        4: 91.7,
        8: 91.5,
        64: 91.4,
    }
    assert paper.TABLE5["WikiSQL"][("o",)] == 73.2 and paper.TABLE5_RANK[("q", "v")] == 4
    assert paper.TABLE18_BLEU[4] == 70.38 and paper.TABLE18_VAL_LOSS[1024] == 1.16
    assert len(paper.TABLE18_BLEU) == len(paper.TABLE18_VAL_LOSS) == 11
    base, large = paper.TABLE2["RoBERTa-base"], paper.TABLE2["RoBERTa-large"]
    for table in (base, large):  # the paper's averages are the means of its eight tasks
        assert np.mean([table[t] for t in paper.GLUE_TASKS]) == pytest.approx(
            table["avg"], abs=0.06
        )
    assert paper.TABLE2_PROVENANCE["RoBERTa-large"] == paper.TRANSCRIBED
    assert paper.TABLE7[4]["dw_norm"] / paper.TABLE7[4]["proj_dw"] == pytest.approx(21.5, abs=0.2)
    assert paper.weight_label(("q", "k", "v", "o")) == "Wq,Wk,Wv,Wo"


def test_table5_table18_table2_layouts(tmp_path):
    # A fixed budget (Table 5): one rank per weight-type set.
    for targets, rank in ((("q",), 8), (("v",), 8), (("q", "v"), 4), (("q", "k", "v", "o"), 2)):
        write_run(
            tmp_path / "t5", "".join(targets), rank=rank, targets=targets, best=0.7 + rank / 100
        )
    (t5,) = [
        b for b in compare.table5(group_cells(read_runs(tmp_path / "t5"))) if isinstance(b, Table)
    ]
    col = {c: i for i, c in enumerate(t5.columns)}
    assert _row(t5, "paper MultiNLI")[col["Wq,Wk,Wv,Wo"]] == "91.7"
    assert _row(t5, "ours r")[col["Wq,Wv"]] == "4" and _row(t5, "ours r")[col["Wk"]] == "-"
    assert _row(t5, "ours", "accuracy (%)")[col["Wq,Wk,Wv,Wo"]] == "72.00 (n=1)"

    # E2E vs rank (Table 18): BLEU measured once at the end, loss at the best step.
    for rank, bleu in ((2, 30.0), (16, 33.5)):
        run = write_run(
            tmp_path / "t18",
            f"r{rank}",
            rank=rank,
            main="bleu",
            task="e2e",
            best=None,
            final=bleu,
            evals=1,
        )
        m = json.loads((run / "metrics.json").read_text())
        m["best"]["loss"] = 1.5 - rank / 100
        (run / "metrics.json").write_text(json.dumps(m))
    (t18,) = [
        b for b in compare.table18(group_cells(read_runs(tmp_path / "t18"))) if isinstance(b, Table)
    ]
    assert t18.columns[2:] == [f"r={r}" for r in paper.TABLE18_RANKS]
    col = {c: i for i, c in enumerate(t18.columns)}
    assert _row(t18, "paper (GPT-2 M, E2E test)")[col["r=4"]] == "70.38"
    assert _row(t18, "ours Wq,Wv", "bleu")[col["r=16"]] == "33.50 (n=1)"
    assert _row(t18, "ours Wq,Wv", "bleu")[col["r=4"]] == "-"
    assert _row(t18, "ours Wq,Wv", "loss (best step)")[col["r=2"]] == "1.480 (n=1)"

    # GLUE (Table 2): our tasks in the paper's rows; MR next to SST-2.
    write_run(tmp_path / "t2", "sst2", rank=8, task="glue_sst2", best=0.9)
    write_run(tmp_path / "t2", "mr", rank=8, task="mr", best=0.8)
    (t2,) = [
        b for b in compare.table2(group_cells(read_runs(tmp_path / "t2"))) if isinstance(b, Table)
    ]
    assert _row(t2, "SST-2") == ["SST-2", "accuracy (%)", "95.1", "96.2", "90.00 (n=1)"]
    assert [r[0] for r in t2.rows].index("SST-2") + 1 == [r[0] for r in t2.rows].index(
        "MR (SST-2's sentences come from it)"
    )
    assert _row(t2, "Avg.")[2:] == ["87.2", "89.0", "-"]  # ours: not every GLUE task was run


def test_rank_pattern_is_an_axis(tmp_path):
    write_run(tmp_path, "plain", rank=8)
    run = write_run(tmp_path, "pattern", rank=8)
    config = OmegaConf.load(run / "config.yaml")
    config.lora.rank_pattern = {"q": 8, "v": 2}
    OmegaConf.save(config, run / "config.yaml")
    cells = group_cells(read_runs(tmp_path))
    assert len(cells) == 2
    assert {c.axes["lora.rank_pattern"] for c in cells} == {"{}", '{"q": 8, "v": 2}'}


def test_lookup_tables_and_bookkeeping_are_not_axes(tmp_path):
    for name, table, workdir_group in (("a", {"x": 1}, "g1"), ("b", {"x": 2}, "g2")):
        run = write_run(
            tmp_path, name, rank=8, seed=int(name == "b"), logger={"group": workdir_group}
        )
        config = OmegaConf.load(run / "config.yaml")
        config.hparams = {"roberta_base": table}
        config.trainer.progress = name == "a"
        OmegaConf.save(config, run / "config.yaml")
    (cell,) = group_cells(read_runs(tmp_path))
    assert cell.seeds == (0, 1)
