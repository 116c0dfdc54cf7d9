"""The `kmm` command line: `kmm train`, `kmm compress`, `kmm export`, `kmm inspect` (entry point `main.main`).

Nothing is imported from TensorFlow before the arguments are valid.
"""
