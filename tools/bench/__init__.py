"""dn2-bench: honest end-to-end speed, torch-eager vs dn2 fp32 vs dn2 int8."""
