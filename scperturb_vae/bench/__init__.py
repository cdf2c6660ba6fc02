"""The speed and memory harness behind ``scvae bench`` (apart from the library proper):
synthetic CSR screens written block by block, one child process per measured stage.

Modules: ``harness`` (:func:`~scperturb_vae.bench.harness.run_bench` and its options),
``synthetic`` (the screens and their writer), ``workers`` (the child processes),
``measure`` (memory, stages, threads, the machine), ``report`` (summaries, ``bench.md``)
and ``constants`` (names and targets they share).  Nothing is imported here, so that
``python -m scperturb_vae.bench.workers`` loads each module once.
"""
