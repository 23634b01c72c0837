"""The numbers of the LoRA paper (Hu et al. 2021, arXiv 2106.09685 v2) as plain data.

Each item says where its numbers come from (table, model, data, metric) and how they got
here: most were checked into the project's FACTS.md; RoBERTa-large in Table 2 was transcribed
from the paper only. `lora_jax.report` puts them beside a sweep's own numbers.

Keys of target sets are tuples of our target names in the order q, k, v, o (`("q", "v")` =
the paper's "Wq, Wv").

Example:
    >>> from lora_jax.report import paper
    >>> paper.TABLE6["WikiSQL"][("q", "v")][8]
    73.8
    >>> paper.ITEMS["table6"].model
    'GPT-3 175B'
"""

from __future__ import annotations

from dataclasses import dataclass

FACTS = "the project's FACTS.md"
TRANSCRIBED = "transcribed from the paper, not in FACTS.md"

Targets = tuple[str, ...]


@dataclass(frozen=True)
class PaperItem:
    """One table or figure of the paper and the provenance of its numbers.

    Attributes:
        key: the name used on the command line and in `paper: [...]` (e.g. "table6").
        title: the paper's caption, shortened.
        model: the paper's model.
        data: the paper's data set(s).
        metric: what the numbers measure, in the paper's units.
        provenance: where the numbers in this module come from.
        same_models: lora_jax model names that are the paper's model (none for GPT-3).
        same_tasks: lora_jax task names that are the paper's data (none for WikiSQL).
    """

    key: str
    title: str
    model: str
    data: str
    metric: str
    provenance: str = FACTS
    same_models: tuple[str, ...] = ()
    same_tasks: tuple[str, ...] = ()


ITEMS: dict[str, PaperItem] = {
    item.key: item
    for item in (
        PaperItem(
            "table2",
            "Table 2: LoRA on GLUE (r=8 on Wq, Wv), median of 5 seeds at the best epoch",
            "RoBERTa-base (125M) and RoBERTa-large (355M)",
            "GLUE dev sets",
            "accuracy (%; MNLI matched), Matthews corr. (CoLA), Pearson corr. (STS-B)",
            f"RoBERTa-base: {FACTS}; RoBERTa-large: {TRANSCRIBED}",
            same_models=("roberta_base", "roberta_large"),
            same_tasks=tuple(
                f"glue_{t}" for t in ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")
            ),
        ),
        PaperItem(
            "table3",
            "Table 3: GPT-2 M with LoRA (r=4 on Wq, Wv) on E2E NLG",
            "GPT-2 Medium (355M)",
            "E2E NLG test set",
            "BLEU",
            same_models=("gpt2_medium",),
            same_tasks=("e2e", "e2e_gem"),
        ),
        PaperItem(
            "table5",
            "Table 5: which weights to adapt under a fixed budget of 18M trainable parameters",
            "GPT-3 175B",
            "WikiSQL and MultiNLI-matched",
            "validation accuracy (%)",
        ),
        PaperItem(
            "table6",
            "Table 6: validation accuracy vs LoRA rank r",
            "GPT-3 175B",
            "WikiSQL and MultiNLI-matched",
            "validation accuracy (%)",
        ),
        PaperItem(
            "table7",
            "Table 7: ||U^T Wq V^T||_F with U, V the top-r directions of dW, of W, or random",
            "GPT-3 175B, layer 48 Wq",
            "its Section 7 adapters",
            "Frobenius norms",
        ),
        PaperItem(
            "table18",
            "Table 18: GPT-2 M on E2E NLG vs LoRA rank r",
            "GPT-2 Medium (355M)",
            "E2E NLG",
            "BLEU (test) and validation loss",
            same_models=("gpt2_medium",),
            same_tasks=("e2e", "e2e_gem"),
        ),
        PaperItem(
            "fig3",
            "Fig. 3: phi(A r=8, A r=64, i, j) of one layer, Wq and Wv",
            "GPT-3 175B",
            "its Section 7 adapters",
            "normalized subspace similarity phi in [0, 1]",
        ),
        PaperItem(
            "fig4",
            "Fig. 4: phi between A (r=64) of two seeds, Wq and Wv, and two random Gaussian matrices",
            "GPT-3 175B",
            "its Section 7 adapters",
            "normalized subspace similarity phi in [0, 1]",
        ),
    )
}

# --- Table 2: GLUE. Rows in the paper's order; (metric name in lora_jax, value). ---
GLUE_TASKS: tuple[str, ...] = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")
GLUE_NAMES: dict[str, str] = {
    "mnli": "MNLI",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "cola": "CoLA",
    "qnli": "QNLI",
    "qqp": "QQP",
    "rte": "RTE",
    "stsb": "STS-B",
}
GLUE_METRICS: dict[str, str] = {
    "mnli": "accuracy",
    "sst2": "accuracy",
    "mrpc": "accuracy",
    "cola": "matthews",
    "qnli": "accuracy",
    "qqp": "accuracy",
    "rte": "accuracy",
    "stsb": "pearson",
}
TABLE2: dict[str, dict[str, float]] = {
    "RoBERTa-base": {
        "mnli": 87.5,
        "sst2": 95.1,
        "mrpc": 89.7,
        "cola": 63.4,
        "qnli": 93.3,
        "qqp": 90.8,
        "rte": 86.6,
        "stsb": 91.5,
        "avg": 87.2,
    },
    "RoBERTa-large": {  # TRANSCRIBED
        "mnli": 90.6,
        "sst2": 96.2,
        "mrpc": 90.9,
        "cola": 68.2,
        "qnli": 94.9,
        "qqp": 91.6,
        "rte": 87.4,
        "stsb": 92.6,
        "avg": 89.0,
    },
}
TABLE2_PROVENANCE: dict[str, str] = {"RoBERTa-base": FACTS, "RoBERTa-large": TRANSCRIBED}

# --- Table 3: GPT-2 M on E2E, LoRA r=4 on Wq, Wv. ---
TABLE3 = {"model": "GPT-2 M", "rank": 4, "targets": ("q", "v"), "bleu": 70.4}

# --- Tables 5 and 6: GPT-3 175B, validation accuracy (%). ---
WEIGHT_SETS: tuple[Targets, ...] = (
    ("q",),
    ("k",),
    ("v",),
    ("o",),
    ("q", "k"),
    ("q", "v"),
    ("q", "k", "v", "o"),
)
TABLE5_RANK: dict[Targets, int] = {t: {1: 8, 2: 4, 4: 2}[len(t)] for t in WEIGHT_SETS}
TABLE5: dict[str, dict[Targets, float]] = {
    "WikiSQL": dict(zip(WEIGHT_SETS, (70.4, 70.0, 73.0, 73.2, 71.4, 73.7, 73.7), strict=True)),
    "MultiNLI": dict(zip(WEIGHT_SETS, (91.0, 90.8, 91.0, 91.3, 91.3, 91.3, 91.7), strict=True)),
}

TABLE6_RANKS: tuple[int, ...] = (1, 2, 4, 8, 64)
TABLE6_SETS: tuple[Targets, ...] = (("q",), ("q", "v"), ("q", "k", "v", "o"))


def _by_rank(values: tuple[float, ...]) -> dict[int, float]:
    return dict(zip(TABLE6_RANKS, values, strict=True))


TABLE6: dict[str, dict[Targets, dict[int, float]]] = {
    "WikiSQL": {
        ("q",): _by_rank((68.8, 69.6, 70.5, 70.4, 70.0)),
        ("q", "v"): _by_rank((73.4, 73.3, 73.7, 73.8, 73.5)),
        ("q", "k", "v", "o"): _by_rank((74.1, 73.7, 74.0, 74.0, 73.9)),
    },
    "MultiNLI": {
        ("q",): _by_rank((90.7, 90.9, 91.1, 90.7, 90.7)),
        ("q", "v"): _by_rank((91.3, 91.4, 91.3, 91.6, 91.4)),
        ("q", "k", "v", "o"): _by_rank((91.2, 91.7, 91.7, 91.5, 91.4)),
    },
}

# --- Table 7: GPT-3 175B, layer 48, Wq. Keys as in lora_jax.analysis.projection.dw_vs_w. ---
TABLE7_W_NORM = 61.95
TABLE7: dict[int, dict[str, float]] = {
    4: {
        "proj_dw": 0.32,
        "proj_w": 21.67,
        "proj_random": 0.02,
        "w_norm": TABLE7_W_NORM,
        "dw_norm": 6.91,
        "amplification": 21.5,
    },
    64: {
        "proj_dw": 1.90,
        "proj_w": 37.71,
        "proj_random": 0.33,
        "w_norm": TABLE7_W_NORM,
        "dw_norm": 3.57,
        "amplification": 2.0,  # the paper says "about 2" (3.57 / 1.90 = 1.9)
    },
}
TABLE7_APPROX: frozenset[tuple[int, str]] = frozenset({(64, "amplification")})

# --- Table 18: GPT-2 M on E2E vs rank. ---
TABLE18_RANKS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TABLE18_BLEU: dict[int, float] = dict(
    zip(
        TABLE18_RANKS,
        (68.72, 69.17, 70.38, 69.57, 69.61, 69.33, 69.24, 68.73, 68.92, 68.78, 69.37),
        strict=True,
    )
)
TABLE18_VAL_LOSS: dict[int, float] = dict(
    zip(TABLE18_RANKS, (1.23, 1.21, 1.18, 1.17) + (1.16,) * 7, strict=True)
)

# --- Figures 3 and 4: qualitative claims, with the numbers they rest on. ---
FIG3_RANKS: tuple[int, int] = (8, 64)
FIG3_TOP_PHI_MIN = 0.5  # phi(1, 1) between A(r=8) and A(r=64) exceeds this for Wq and Wv
FIG3_CLAIM = (
    "the top singular direction of A is shared between r=8 and r=64 (phi(1,1) > 0.5, Wq and "
    "Wv); the other directions are mostly noise"
)
FIG4_RANK = 64
FIG4_CLAIM = (
    "across two seeds at r=64, dWq shares more directions than dWv (a higher 'intrinsic rank' "
    "for Wq); two random Gaussian matrices share none beyond chance"
)


def weight_label(targets: Targets | list[str] | str) -> str:
    """The paper's name of a target set: ("q", "v") -> "Wq,Wv"; "" for no targets."""
    if isinstance(targets, str):
        targets = tuple(t for t in targets.split(",") if t)
    return ",".join(f"W{t}" for t in targets)
