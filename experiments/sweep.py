"""The main job: one LoRA run per grid point, then the cross-run rank analysis.

    python -m experiments.sweep rank=1,2,4,8

Sweeps MiniLM + MR over ranks 1, 2, 4, 8 (about 10 minutes on 2 CPU cores), writes
outputs/sweeps/<time>/{<run>/, sweep_summary.json, analysis.json, *.png, report.md} and prints
the path of report.md last. Add `targets=q,qv,q+ffn_in seed=0,1` for a grid (`+` joins targets
within one run), `debug=fast` to smoke-test.
"""

from experiments.train import CONF, job
from lora_jax.cli import hydra_main

main = hydra_main(job, CONF, "sweep")

if __name__ == "__main__":
    main()
