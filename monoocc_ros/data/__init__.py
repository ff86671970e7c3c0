"""Datasets: SemanticKITTI file formats, the PyTorch Dataset, and the synthetic world."""
