"""One LoRA run.

    python -m experiments.train model=minilm data=mr rank=8

Trains LoRA r=8 on Wq,Wv of all-MiniLM-L6-v2 on MR polarity (offline, CPU) into
outputs/runs/<time>/ and prints a one-screen summary (see README for the accuracy).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lora_jax.config import register_configs

register_configs()
CONF = str(Path(__file__).resolve().parents[1] / "conf")  # absolute: `job` is reused by sweep.py


def job(cfg: DictConfig) -> float:
    """One run into `cfg.workdir`; returns its final main metric (for Hydra sweepers)."""
    from lora_jax.train import enable_compilation_cache, run

    enable_compilation_cache()

    result = run(cfg, cfg.workdir)
    return result["final"][result["main_metric"]]


main = hydra.main(config_path=CONF, config_name="config", version_base="1.3")(job)

if __name__ == "__main__":
    main()
