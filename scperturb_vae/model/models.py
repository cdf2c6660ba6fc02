"""The user's model classes: ``SVAEPlus``, ``SVAE``, ``IVAE`` and ``VAE``.

All four are scvi-tools models over the same :class:`~scperturb_vae.module.vae.PerturbationVAEModule`
and differ only in the prior object they build.  They share one ``setup_anndata``
(written once, in :class:`~scperturb_vae.model.base.PerturbationModelBase`):

>>> import scperturb_vae as sv
>>> sv.SVAEPlus.setup_anndata(adata, perturbation_key="gene", control_label="non-targeting")
>>> model = sv.SVAEPlus(adata, n_latent=15)
>>> model.train(max_epochs=100)
>>> adata.obsm["X_svae"] = model.get_latent_representation()
>>> graph = model.get_intervention_graph()   # perturbations x latents, in [0, 1]
"""

from __future__ import annotations

import logging
from typing import Literal

from anndata import AnnData

from scperturb_vae.model.base import PerturbationModelBase
from scperturb_vae.model.registry import CLASS_NAMES, DEFAULT_N_LATENT
from scperturb_vae.module.priors import ConditionalGaussianPrior, SparseShiftPrior, StandardNormalPrior

logger = logging.getLogger("scperturb_vae")

__all__ = ["MODELS", "SVAEPlus", "SVAE", "IVAE", "VAE"]

_NETWORK_DOC = """
    n_latent
        Number of latent variables.
    likelihood
        Count likelihood: ``"nb"`` (default), ``"zinb"`` or ``"poisson"``; the observed
        library size scales the decoded proportions."""

_KWARGS_DOC = """    **module_kwargs
        Network options of :class:`~scperturb_vae.module.vae.PerturbationVAEModule`:
        ``n_hidden`` (128), ``n_layers`` (1), ``dropout_rate`` (0.1), ``encoder_norm``
        and ``decoder_norm`` (``"batch"``, ``"layer"`` or ``"none"``; default ``"batch"``), ``encode_perturbation`` (False;
        True gives the encoder the perturbation, ``q(z | x, a)``), and ``decoder`` (``"standard"``,
        or ``"injective"``: the latent-identifiable VAE's injective decoder against posterior collapse,
        :mod:`scperturb_vae.module.injective`)."""


class SVAEPlus(PerturbationModelBase):
    __doc__ = f"""sVAE+: the sparse mechanism shift VAE (Lopez et al., CLeaR 2023).

    Prior ``z_i | a ~ gamma_i^a N(mu_i^a, 1) + (1 - gamma_i^a) N(0, 1)`` with
    ``gamma_i^a ~ Bernoulli(pi_i^a)`` and ``pi_i^a ~ Beta(1, K)``; see
    :class:`~scperturb_vae.module.priors.SparseShiftPrior`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.{_NETWORK_DOC}
    beta_k
        ``K`` of the Beta(1, K) prior on the mask probabilities: the prior odds against an edge
        are ``K : 1``.  With the default estimator an edge is kept when the cells of its
        perturbation give it more than ``log K`` nats of evidence (4.6 at K = 100) beyond the
        slab's Occam factor; lower ``K`` for more edges, raise it for fewer.  ``K = 1`` is flat.
    mask_init_logit
        Initial logit of every mask probability (3.0: ``pi = 0.95``, every edge on at first).
    kl_estimator
        ``"shared"`` (default): the mask is shared by all cells of a perturbation, and its
        posterior inclusion probability is fitted, so evidence grows with the number of cells
        (see :class:`~scperturb_vae.module.priors.SparseShiftPrior`);
        :meth:`get_edge_evidence` gives each edge's log Bayes factor.  ``"mixture"`` (the
        previous default): a point estimate of ``pi`` with the mask drawn per cell, where an
        edge must gain about ``K`` nats, so weak and moderate effects get none.  ``"gumbel"``
        (the paper's): masks sampled per cell by a straight-through Gumbel-sigmoid.
    slab, slab_scale
        The slab of the shifts (``"shared"`` only): ``"gaussian"`` (default, ``mu ~ N(0, s^2)``)
        or ``"laplace"`` (``Laplace(0, b)``, an L1 pull that also shrinks each shift by
        ``1 / (n b)``); ``slab_scale`` is ``s`` or ``b``, in sd of the latent.
    min_edge_share
        The share of a perturbation's squared shift that an edge must carry (``"shared"``
        only; 0.1: at most ten equal targets).  With many cells even a small residual
        component of a shift is significant; this keeps the graph to the latents a
        perturbation mainly moves, not the residuals of an imperfect alignment.  0 gives
        the pure evidence rule.
    temperature
        Gumbel-sigmoid temperature of the relaxed masks (``kl_estimator="gumbel"`` only).
{_KWARGS_DOC}
    """

    def __init__(
        self,
        adata: AnnData | None = None,
        n_latent: int = DEFAULT_N_LATENT,
        likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        beta_k: float = 100.0,
        temperature: float = 1.0,
        mask_init_logit: float = 3.0,
        kl_estimator: Literal["shared", "mixture", "gumbel"] = "shared",
        slab: Literal["gaussian", "laplace"] = "gaussian",
        slab_scale: float = 1.0,
        min_edge_share: float = 0.1,
        **module_kwargs,
    ):
        n_pert = self._init_base(adata)
        prior = SparseShiftPrior(
            n_latent, n_pert, sparsity="beta", beta_k=beta_k, temperature=temperature,
            mask_init_logit=mask_init_logit, kl_estimator=kl_estimator, slab=slab, slab_scale=slab_scale,
            min_edge_share=min_edge_share,
            cell_counts=self._perturbation_cell_counts(),
        )
        self._build(prior, n_latent, likelihood, module_kwargs)
        self._model_summary_string = (
            f"sVAE+ with {n_latent} latents, {n_pert} perturbations, K={beta_k}, {likelihood} likelihood"
        )
        self.init_params_ = self._get_init_params(locals())


class SVAE(PerturbationModelBase):
    __doc__ = f"""sVAE: the sparse shift prior with a plain L1 penalty on the mask probabilities.

    The ablation of the sVAE+ paper: the same prior as :class:`SVAEPlus` but the Beta(1, K)
    hyper-prior replaced by ``sparsity_penalty * sum(pi)`` (also divided by the number of
    cells).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.{_NETWORK_DOC}
    sparsity_penalty
        Weight of the L1 penalty on the mask probabilities.
    temperature
        Gumbel-sigmoid temperature of the relaxed masks.
    mask_init_logit
        Initial logit of every mask probability.
    kl_estimator
        As for :class:`SVAEPlus` (the same default, so that only the penalty differs).
{_KWARGS_DOC}
    """

    def __init__(
        self,
        adata: AnnData | None = None,
        n_latent: int = DEFAULT_N_LATENT,
        likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        sparsity_penalty: float = 100.0,
        temperature: float = 1.0,
        mask_init_logit: float = 3.0,
        kl_estimator: Literal["shared", "mixture", "gumbel"] = "shared",
        **module_kwargs,
    ):
        n_pert = self._init_base(adata)
        prior = SparseShiftPrior(
            n_latent, n_pert, sparsity="l1", l1_strength=sparsity_penalty,
            temperature=temperature, mask_init_logit=mask_init_logit, kl_estimator=kl_estimator,
            cell_counts=self._perturbation_cell_counts(),
        )
        self._build(prior, n_latent, likelihood, module_kwargs)
        self._model_summary_string = (
            f"sVAE with {n_latent} latents, {n_pert} perturbations, L1={sparsity_penalty}, {likelihood} likelihood"
        )
        self.init_params_ = self._get_init_params(locals())


class IVAE(PerturbationModelBase):
    __doc__ = f"""iVAE (Khemakhem et al. 2020) with the perturbation as auxiliary variable.

    Prior ``p(z_i | a) = N(m_i^a, exp(l_i^a))`` with free per-perturbation log-variances
    (always modulated: identifiability needs them) and means; see
    :class:`~scperturb_vae.module.priors.ConditionalGaussianPrior`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.{_NETWORK_DOC}
    modulate_mean
        Also learn per-perturbation means (the reference iVAE code learns only variances).
{_KWARGS_DOC}
    """

    def __init__(
        self,
        adata: AnnData | None = None,
        n_latent: int = DEFAULT_N_LATENT,
        likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        modulate_mean: bool = True,
        **module_kwargs,
    ):
        n_pert = self._init_base(adata)
        prior = ConditionalGaussianPrior(n_latent, n_pert, modulate_mean=modulate_mean)
        self._build(prior, n_latent, likelihood, module_kwargs)
        self._model_summary_string = f"iVAE with {n_latent} latents, {n_pert} perturbations, {likelihood} likelihood"
        self.init_params_ = self._get_init_params(locals())


class VAE(PerturbationModelBase):
    __doc__ = f"""The plain VAE baseline (scVI-like, prior ``N(0, I)``), with beta-VAE and beta-TCVAE.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.{_NETWORK_DOC}
    beta
        Weight of the KL term (beta-VAE; 1 is the plain VAE).
    tc_beta
        When set, the beta-TCVAE objective: the KL is split into index-code mutual
        information, total correlation and dimension-wise KL (minibatch-weighted sampling),
        and only the total correlation is weighted, by ``tc_beta``.
{_KWARGS_DOC}
    """

    def __init__(
        self,
        adata: AnnData | None = None,
        n_latent: int = DEFAULT_N_LATENT,
        likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        beta: float = 1.0,
        tc_beta: float | None = None,
        **module_kwargs,
    ):
        n_pert = self._init_base(adata)
        prior = StandardNormalPrior(n_latent, n_pert)
        self._build(prior, n_latent, likelihood, module_kwargs, beta=beta, tc_beta=tc_beta)
        kind = "beta-TCVAE" if tc_beta is not None else ("beta-VAE" if beta != 1 else "VAE")
        self._model_summary_string = f"{kind} with {n_latent} latents, {likelihood} likelihood"
        self.init_params_ = self._get_init_params(locals())


#: CLI / config name -> model class (the names and their order: :mod:`scperturb_vae.model.registry`)
MODELS: dict[str, type[PerturbationModelBase]] = {name: globals()[cls] for name, cls in CLASS_NAMES.items()}
