"""Plots in scanpy's style: every figure of the package is drawn here.

Every notebook function returns the :class:`matplotlib.figure.Figure` it drew, draws into
the axes given as ``ax=`` (one :class:`~matplotlib.axes.Axes`, or a sequence of them for the
functions that draw several panels), and with ``save="path.png"`` also writes the figure
(the format from the suffix; written atomically, replacing an existing file).

Without ``ax``, the figure is a :class:`matplotlib.figure.Figure` made without pyplot: it
is not registered with the pyplot state machine, so scripts open no window and keep no
figure alive.  As in scanpy, a notebook shows every figure a cell draws (``show=None``:
shown in a Jupyter kernel unless ``ax`` is given) and the call then returns None
(``return_fig=True`` returns it too); ``show=False`` only returns it.

- :func:`graph`: the intervention graph (perturbations x latents), beside the
  simulation's true graph with ``truth=True``;
- :func:`latents`: an embedding (e.g. UMAP) coloured by each latent, one panel per latent;
- :func:`latents_by_perturbation`: the mean of each latent per perturbation;
- :func:`traversal`: decoded expression of top genes as a latent moves;
- :func:`graph_vs_data`: the graph against the counts (:func:`scperturb_vae.tl.graph_vs_data`);
- :func:`enrichment`: gene-set enrichment dot plot;
- :func:`heldout_nll` and :func:`fewshot`: the held-out likelihood of
  :func:`scperturb_vae.tl.heldout_nll`.

The modules: :mod:`.base` (shared helpers: figures, given axes, saving, heatmaps),
:mod:`.graph`, :mod:`.latents`, :mod:`.traversal`, :mod:`.enrichment`, :mod:`.heldout`, and
the figures of the commands: :mod:`.training` (``scvae train``), :mod:`.interpret`
(``scvae interpret``), :mod:`.benchmark` (``scvae benchmark``); ``scvae evaluate`` draws
with :mod:`.heldout`.  The pipelines write every PNG with :func:`scperturb_vae.pl.base.save`.
"""

from scperturb_vae.pl import enrichment as _enrichment_module
from scperturb_vae.pl import graph_data as _graph_data_module
from scperturb_vae.pl import heldout as _heldout_module
from scperturb_vae.pl import latents as _latents_module
from scperturb_vae.pl import traversal as _traversal_module
from scperturb_vae.pl.base import shows_figure
from scperturb_vae.pl.graph import graph as _graph_function

# the notebook functions follow scanpy's show= convention (the modules' functions, which the
# pipelines call, return the figure only)
enrichment = shows_figure(_enrichment_module.enrichment)
graph = shows_figure(_graph_function)
graph_vs_data = shows_figure(_graph_data_module.graph_vs_data)
fewshot = shows_figure(_heldout_module.fewshot)
heldout_nll = shows_figure(_heldout_module.heldout_nll)
prediction_scores = shows_figure(_heldout_module.prediction_scores)
latents = shows_figure(_latents_module.latents)
latents_by_perturbation = shows_figure(_latents_module.latents_by_perturbation)
traversal = shows_figure(_traversal_module.traversal)

__all__ = ["enrichment", "fewshot", "graph", "graph_vs_data", "heldout_nll", "latents", "latents_by_perturbation", "prediction_scores", "traversal"]
