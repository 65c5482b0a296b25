"""The training loop, its callbacks, schedules, cached features, LR finder, DDP rank side."""
