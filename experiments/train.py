"""One LoRA run.

    python -m experiments.train model=minilm data=mr rank=8

Trains LoRA r=8 on Wq,Wv of all-MiniLM-L6-v2 on MR polarity (offline, CPU) into
outputs/runs/<time>/ and prints a one-screen summary (see README for the accuracy).
"""

from pathlib import Path

from omegaconf import DictConfig

from lora_jax.cli import hydra_main
from lora_jax.config import register_configs

register_configs()
CONF = str(Path(__file__).resolve().parents[1] / "conf")  # absolute: `job` is reused by sweep.py


def job(cfg: DictConfig) -> float:
    """One run into `cfg.workdir`; returns its final main metric (for Hydra sweepers)."""
    from lora_jax.config import run_config
    from lora_jax.report.render.console import print_summary
    from lora_jax.train import NonFiniteLossError, run
    from lora_jax.train.compile_cache import enable_compilation_cache
    from lora_jax.user_errors import out_of_space, user_errors

    enable_compilation_cache()

    # A diverged run or a full disk is a user situation: one message, exit status 2.
    with user_errors(errors=(NonFiniteLossError,)), out_of_space(cfg.workdir):
        config = run_config(cfg)  # Hydra's DictConfig, typed once: the library takes this
        result = run(config, config.workdir, on_result=print_summary)
    return result["final"][result["main_metric"]]


# Every value is checked before Hydra makes the run folder (lora_jax.sweep.validate.CheckCallback); a
# bad one prints one message and exits 2.
main = hydra_main(job, CONF, "config")

if __name__ == "__main__":
    main()
