"""CtP (Catch-the-Patch): self-supervised video representation learning in plain PyTorch.

This package never imports Flower or Hydra: it owns the R3D-18 backbone, the CtP pretext model,
its data pipeline, the training loop, the fine-tuning classifier and retrieval.
"""
