"""Evaluation: generate answers for a dataset and score them."""
