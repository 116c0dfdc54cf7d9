"""The `kmm` command line: `kmm train`, `kmm export`, `kmm inspect` (entry point `main.main`).

Nothing is imported from TensorFlow before the arguments are valid.
"""
