"""The report's sections: each module turns runs (`cells`) or `analysis.json` into report blocks
(paragraphs, tables, figures of `lora_jax.report.render.document`): `our_setup` (our setup
against the paper's), `compare` (the paper's Tables 2, 3, 5, 6, 18), `analysis_tables` (Table 7,
Figures 3 and 4), `metric_figure` (metric against rank), `seed_section` (seed statistics),
`rank_analysis` (the rank analysis), `rank_used` (how the rank dW uses grows with r),
`full_finetuning` and `versus_full_seeds` (LoRA against
full fine-tuning), `over_training` (rank measurements over training), `training_curves`
(learning rate against rank, rsLoRA) and `audit_section` (the rank audit and advice).
"""
