"""Evaluating a trained run: metrics, Grad-CAM, predictions on new images."""
