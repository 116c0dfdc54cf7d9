"""Export to TFLite for phones (LiteRT), microcontrollers (TFLite Micro) and the Coral Edge TPU.

- `tflite`: `export_tflite`, which converts a stripped model and verifies the
  file by running it before writing anything, and `inspect_tflite`;
- `deployable`: the Functional model that is exported and its outputs' tasks;
- `targets`: what each target needs (batch, quantization, extra files);
- `runtimes`: LiteRT and TFLite Micro, in-process;
- `edgetpu`: the Edge TPU's operator rules and compiler;
- `logits`: dropping final softmaxes for int8 files;
- `surgery`: `shrink`, which cuts removed units out of a structured-pruned model;
- `qat`: pruning-preserving quantisation-aware training.

Imports the core and the sparsity toolkit.
"""
