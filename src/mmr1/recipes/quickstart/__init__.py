"""The quickstart recipe: its runner and YAMLs."""
