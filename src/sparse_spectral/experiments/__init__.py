"""Experiments over the task registry: the SST ablation."""
