"""Sweeps: the grid (`grid`), every job checked before the first trains (`validate`, also the
entry points' error handling), and the end of a sweep: summary, analysis, report (`finish`).
The fused launcher is Hydra's plugin in `hydra_plugins/lora_jax_fused`."""
