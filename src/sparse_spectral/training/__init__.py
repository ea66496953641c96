"""Training: the loop, checkpoints and metric loggers (task-agnostic)."""
