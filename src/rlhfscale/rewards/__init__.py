"""Pure reward math on tensors: RM losses, step aggregation, metrics, shaping, Monte-Carlo labels.

Nothing here reads files or trains a model (that is `rlhfscale.rm`), and nothing imports
`rlhfscale.models`, so models may import from here without a cycle.
"""
