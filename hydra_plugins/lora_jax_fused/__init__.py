"""The fused-sweep launcher for Hydra (`hydra/launcher=fused`); the training is `lora_jax.train.fused`.

Hydra instantiates launcher plugins only from the `hydra_plugins` namespace package, so the
launcher (`fused_launcher.FusedLauncher`) lives here.
"""
