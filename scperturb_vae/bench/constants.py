"""Names, targets and defaults shared by the modules of the bench harness.

The label of the reference model, the per-epoch and memory targets the models are held to,
the threads of each child by default and the columns of ``bench.csv``.
"""

from __future__ import annotations

__all__ = [
    "BACKED_TARGET_MB",
    "BENCH_COLUMNS",
    "BACKED_TARGET_RATIO",
    "DEFAULT_THREADS",
    "MB",
    "SCVI_NAME",
    "SPARSE_TARGET",
    "TARGET_MODELS",
    "TARGET_RATIO",
]

#: the label of the reference in ``bench.csv``
SCVI_NAME = "scvi"
#: per-epoch time of sVAE+ and iVAE relative to SCVI that the models aim at
TARGET_RATIO = 1.2
#: peak memory of the sparse check relative to CSR + model bytes that it aims at
SPARSE_TARGET = 2.0
#: peak resident memory (MB) of an out-of-core (backed) training run that it aims at
BACKED_TARGET_MB = 3072.0
#: time of the out-of-core training steps relative to the same steps in memory that it aims at
BACKED_TARGET_RATIO = 1.2
#: torch / BLAS threads of each child by default: ``None``, the setting a user of the commands
#: gets (:func:`scperturb_vae.threads.default_threads`: the free cores); ``--threads N`` fixes it
DEFAULT_THREADS: int | None = None
#: models held to :data:`TARGET_RATIO`
TARGET_MODELS = ("svae+", "ivae")
#: bytes in a MB
MB = float(1 << 20)

#: ``bench.csv``'s columns, in order
BENCH_COLUMNS = (
    "model", "seconds_per_epoch", "ratio_to_scvi", "cpu_seconds_per_epoch", "cpu_ratio_to_scvi", "first_epoch_seconds", "train_loop_seconds_per_epoch",
    "validation_seconds_per_epoch", "post_train_seconds", "steps_per_epoch",
    "is_cells", "is_samples", "is_seconds", "is_cell_samples_per_second", "is_ratio_to_scvi", "is_nll_mean",
    "peak_rss_mb", "peak_rss_above_imports_mb", "train_peak_rss_mb", "param_bytes", "repeats",
    "n_cells", "n_train_cells", "n_genes", "density", "nnz", "n_perturbations", "n_latent", "n_hidden",
    "n_layers", "batch_size", "warmup_epochs", "epochs", "threads",
    "setting", "reference", "ratio_to_reference", "train_cells_per_second",
)

