"""Datasets on disk: sample tables and manifests, verification, near duplicates,
contamination, prompt files, and the synthetic suite generator."""
