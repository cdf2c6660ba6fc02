"""The ``scvae`` command-line program (installed as the ``scvae_cli`` package)."""
