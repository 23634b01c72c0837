"""The rank audit of PEFT LoRA adapters without their base (`python -m experiments.analyze
--adapters`), in float64 numpy: importing it loads no JAX (docs/audit.md).

- `cores`: exact singular values, summaries and phi of B·A from r x r Gram cores;
- `measure`: the audit over adapter folders, one matrix at a time, the rank advice, the files.
"""
