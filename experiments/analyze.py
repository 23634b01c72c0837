"""Re-run the rank analysis of a finished sweep from its saved adapters.

    python -m experiments.analyze outputs/sweeps/<id>

Rewrites sweep_summary.json, analysis.json, the PNG figures and report.md in that folder and
prints the report's path.
"""

import argparse

from lora_jax.sweep import finish_sweep


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", help="a folder made by experiments.sweep")
    args = parser.parse_args()
    print(finish_sweep(args.sweep_dir).absolute())


if __name__ == "__main__":
    main()
