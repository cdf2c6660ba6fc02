"""Public accessors of what :mod:`scperturb_vae.tl` wrote into an AnnData."""
