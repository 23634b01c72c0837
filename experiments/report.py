"""Report a finished sweep beside the LoRA paper's numbers: local Markdown/HTML and W&B.

    python -m experiments.report outputs/sweeps/<id>                  # tables from the runs' `paper:` config
    python -m experiments.report outputs/sweeps/<id> --paper table6   # or name them
    python -m experiments.report outputs/sweeps/<id> --out /tmp/rep --no-wandb

Writes <sweep>/report.md (PNG links to figures/) and report.html (self-contained), the same
report the sweep's end writes, with the rank analysis of analysis.json; builds the W&B Report
of the sweep's group and saves it when W&B is online; prints the path of report.html last.
"""

import argparse
from pathlib import Path

from lora_jax.report import ReportInputError, make_report, paper
from lora_jax.runs.record import RunFolderError
from lora_jax.train.signals import stop_at_once
from lora_jax.user_errors import check_output_dir, user_errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", help="a folder made by experiments.sweep")
    parser.add_argument(
        "--paper",
        nargs="+",
        metavar="ITEM",
        help=f"paper tables/figures to compare with (default: the runs' `paper` config); one of: {', '.join(paper.ITEMS)}",
    )
    parser.add_argument("--out", help="output folder (default: the sweep folder)")
    parser.add_argument("--no-wandb", action="store_true", help="do not build the W&B Report")
    args = parser.parse_args()
    # Bad input (ReportInputError, RunFolderError, a folder we cannot write): one message and
    # exit status 2 (the traceback too with HYDRA_FULL_ERROR=1).
    with user_errors():
        if args.out is not None:
            check_output_dir(args.out, "--out", "--out /tmp/report")
        elif Path(args.sweep_dir).is_dir():  # the report is written into the sweep folder
            check_output_dir(args.sweep_dir, "sweep_dir", "--out /tmp/report")
    with user_errors(errors=(ReportInputError, RunFolderError)), stop_at_once("the report"):
        result = make_report(args.sweep_dir, args.paper, args.out, use_wandb=not args.no_wandb)
    print(result.wandb_message)
    print(result.markdown.absolute())
    print(result.html.absolute())


if __name__ == "__main__":
    main()
