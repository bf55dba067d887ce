"""mmr1: R1-style reinforcement learning for vision-language models."""

__version__ = "0.1.0"
