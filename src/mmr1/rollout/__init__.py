"""Rollout engines: token-in/token-out generation behind one interface."""
