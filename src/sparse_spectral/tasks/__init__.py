"""Tasks: data + model + metric for each experiment family."""
