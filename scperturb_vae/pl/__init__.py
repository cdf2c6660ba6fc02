"""Plots in scanpy's style: every figure of the package is drawn here."""

from scperturb_vae.pl.api import enrichment, fewshot, graph, heldout_nll, latents, latents_by_perturbation, traversal

__all__ = ["enrichment", "fewshot", "graph", "heldout_nll", "latents", "latents_by_perturbation", "traversal"]
