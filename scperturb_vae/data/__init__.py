"""Everything about the input: validation, labels and combinations, reading (in memory
and backed), gene-set and cluster files, simulation, and published layouts (prepare).

Nothing here imports torch.
"""
