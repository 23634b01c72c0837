"""Model evaluations after training (`evals.json`): each run's model rebuilt from its last
checkpoint with swapped kernels (`kernel_eval`), and what is measured with them beside a full
fine-tuning run (`model_evals`: truncation curves, forgetting, the intruder intervention). A
stage of its own: it reads `analysis.json` and the run folders, and writes `evals.json` only."""
