"""Hydra glue for sweeps: the grid (`grid`), every job checked before the first trains
(`validate.CheckCallback`), and the callback that runs the stages after training at the sweep's
end (`finish.SweepCallback` -> `lora_jax.stages.finish_sweep`). The fused launcher is Hydra's
plugin in `hydra_plugins/lora_jax_fused`."""
