"""Sparsity with the TF Model Optimization Toolkit's pruning wrappers.

The shared toolkit:

- `pruning`: find, measure and strip tfmot's wrappers, through nested models
  and `MultiTaskModel`;
- `policy`: which layers of a multi-task graph are pruned (trunk, task-hidden,
  output roles);
- `densities`: how a sparsity budget is shared between layers (uniform, ERK, ...);
- `mask_updaters`: the prune-and-grow rules of dynamic sparse training (RigL, SET);
- `scope`: `prune_scope`, to load a model saved with its wrappers.

The methods:

- `reweighted`: reweighted ℓ1 (Guo et al. 2025), unstructured or by filter;
- `structured`: the unit (filter) norms, removal and the zeros it holds;
- `dependency`: the channel dependency groups of a Functional graph (residual
  `Add`, depthwise, padding, squeeze-excite, concatenation, nested trunks),
  their importance (ℓ2, per-task Taylor under the task weights) and removal;
- `dst`: dynamic sparse training (`DynamicSparseTraining`);
- `task_aware`, `task_similarity`: task-aware dynamic sparsity (Choi et al. 2023);
- `hybrid`: a shared trunk plus sparse per-task kernels (Xie et al. 2022);
- `methods`: the methods behind one interface (`SparsityMethod`) and their
  registry, which `kmm train` and the benchmarks run (imports no TensorFlow);
- `budget`: the sparsest model whose worst task stays within a budget of the
  dense one (`compress_to_budget`, what `kmm compress` runs).

Imports the core; never the export part.
"""
