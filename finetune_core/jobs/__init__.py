"""Running runs: the job manager, the torchrun launcher and supervisor, post-run steps."""
