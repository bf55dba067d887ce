"""The othink_mr1 recipe: its runner and YAMLs."""
