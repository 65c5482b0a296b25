"""The model zoo, weight sources, custom backbones, checkpoints."""
