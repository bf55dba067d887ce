"""The mmsearch_r1 recipe: its runner and YAMLs."""
