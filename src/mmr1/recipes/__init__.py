"""The papers: one folder per recipe, holding its runner and YAMLs; `common` holds the shared experiment helpers."""
