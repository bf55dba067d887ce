"""The vision_r1 recipe: its runner and YAMLs."""
