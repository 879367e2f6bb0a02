"""Run-time machinery around training: atomic files, checkpoints and their safe loading, the run-directory lock,
resuming a run with its own config, guards against non-finite losses, preemption and requeue."""
