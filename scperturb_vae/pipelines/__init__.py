"""The commands' library functions: the only code that reads input files and writes run
folders (train, evaluate, interpret, score, benchmark, clusters, prepare, simulate, demo).
Each reads, calls :mod:`scperturb_vae.tl` / :mod:`scperturb_vae.pl`, and writes atomically.
"""
