r"""One scvi-tools module for the whole model family: encoder, decoder, count likelihood, and a
pluggable prior ``p(z | a)`` (see :mod:`scperturb_vae.module.priors`).

Generative model for a cell with counts ``x`` (genes), observed library size ``l = sum(x)``,
batch ``s`` and perturbation(s) ``a``::

    z ~ p(z | a)                                   (the prior object)
    rho = softmax(f_dec(z, s))                     (the decoder never sees ``a``)
    x_g ~ NB(l * rho_g, theta_g)  |  ZINB  |  Poisson

Inference: ``q(z | x, s)`` (or ``q(z | x, s, a)`` with ``encode_perturbation=True``), a
diagonal Gaussian from an MLP on ``log1p(x)``.

Objective (per minibatch, to minimise)::

    mean_cells[ -log p(x | z) + kl_weight * beta * KL_term ] + kl_weight * prior.penalty() / n_obs

where ``n_obs`` is the number of training cells, so the total is the negative ELBO of the
whole screen divided by its size.  ``KL_term`` is the prior's own KL, or, with ``tc_beta``
set (beta-TCVAE), the decomposition ``MI + tc_beta * TC + dimension-wise KL`` estimated by
minibatch-weighted sampling (Chen et al. 2018).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import DecoderSCVI, Encoder
from torch import nn
from torch.distributions import Normal

from scperturb_vae.module.injective import InjectiveDecoder
from scperturb_vae.module.likelihoods import DECODERS, LIKELIHOODS, NORMS
from scperturb_vae.module.priors import Prior

Likelihood = Literal["nb", "zinb", "poisson"]
Norm = Literal["layer", "batch", "none"]
DecoderKind = Literal["standard", "injective"]


#: bytes one pass of the importance sampling may hold (the README's figure)
IS_MEMORY_BUDGET = 1 << 30
#: float32 samples x cells x genes arrays alive at once in a pass (decoded scale, rate,
#: dispersion terms, log-likelihood): 100 samples x 128 cells x 20k genes took about 6 GB
IS_ARRAYS_PER_PASS = 6
#: the most samples per pass (more saves little time)
MAX_SAMPLES_PER_PASS = 100


def samples_per_pass(n_genes: int, n_cells: int, budget: int = IS_MEMORY_BUDGET) -> int:
    """Importance samples per pass so that ``n_cells x n_genes`` stays within ``budget`` bytes."""
    per_sample = 4 * IS_ARRAYS_PER_PASS * max(1, n_genes) * max(1, n_cells)
    return int(min(MAX_SAMPLES_PER_PASS, max(1, budget // per_sample)))


class PerturbationVAEModule(BaseModuleClass):
    """Encoder / decoder / likelihood shared by sVAE+, sVAE, iVAE and VAE.

    Parameters
    ----------
    n_input
        Number of genes.
    label_perturbations
        ``(n_labels, k)`` long tensor: for each category code of the registered perturbation
        column, the indices of its single perturbations, padded with ``-1`` (controls: all
        ``-1``; ``A+B``: two entries).
    prior
        The prior object.
    n_batch
        Number of batches (0 or 1: none).
    n_latent, n_hidden, n_layers, dropout_rate
        Network sizes, as in scVI.
    likelihood
        ``"nb"``, ``"zinb"`` or ``"poisson"``.
    encode_perturbation
        Feed the perturbation (multi-hot) to the encoder: ``q(z | x, a)``.
    beta
        Weight of the KL term (beta-VAE when != 1).
    tc_beta
        When set, use the beta-TCVAE decomposition with this weight on the total correlation.
    decoder
        ``"standard"`` (scVI's decoder) or ``"injective"``: the latent-identifiable VAE's
        injective decoder built from Brenier maps (:class:`~scperturb_vae.module.injective.InjectiveDecoder`;
        ``decoder_norm`` does not apply), against posterior collapse.
    encoder_norm, decoder_norm
        Normalisation of the hidden layers: ``"batch"`` (default, as scVI), ``"layer"`` or
        ``"none"``.  On the sVAE+ paper's simulation (100 epochs) batch norm in both gave the
        best recovery (MCC 0.86, graph F1 0.91; layer norm in both 0.62 / 0.62; none 0.47 /
        0.36).  Batch norm evaluates with running averages that lag behind the weights; the
        models recompute them after training
        (:meth:`~scperturb_vae.model.models.PerturbationModelBase.recalibrate_batch_norm`).
    """

    def __init__(
        self,
        n_input: int,
        label_perturbations: torch.Tensor,
        prior: Prior,
        *,
        n_batch: int = 0,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        likelihood: Likelihood = "nb",
        encode_perturbation: bool = False,
        beta: float = 1.0,
        tc_beta: float | None = None,
        encoder_norm: Norm = "batch",
        decoder_norm: Norm = "batch",
        decoder: DecoderKind = "standard",
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
        for norm in (encoder_norm, decoder_norm):
            if norm not in NORMS:
                raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
        self.n_input = n_input
        self.n_latent = n_latent
        self.n_batch = n_batch
        self.likelihood = likelihood
        self.encode_perturbation = encode_perturbation
        self.beta = float(beta)
        self.tc_beta = None if tc_beta is None else float(tc_beta)
        self.prior = prior
        self.register_buffer("label_perturbations", label_perturbations.long())
        self.n_encoder_perturbations = prior.n_perturbations if encode_perturbation else 0

        cat_list = [n_batch]
        self.z_encoder = Encoder(
            n_input + self.n_encoder_perturbations,
            n_latent,
            n_cat_list=cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=encoder_norm == "batch",
            use_layer_norm=encoder_norm == "layer",
            return_dist=True,
        )
        self.decoder_kind = decoder
        if decoder == "injective":
            self.decoder = InjectiveDecoder(n_latent, n_input, n_batch=n_batch, n_hidden=n_hidden)
        else:
            self.decoder = DecoderSCVI(
                n_latent,
                n_input,
                n_cat_list=cat_list,
                n_layers=n_layers,
                n_hidden=n_hidden,
                inject_covariates=True,
                use_batch_norm=decoder_norm == "batch",
                use_layer_norm=decoder_norm == "layer",
            )
        self.px_r = nn.Parameter(torch.randn(n_input))

    # ------------------------------------------------------------------ helpers
    def perturbation_index(self, labels: torch.Tensor) -> torch.Tensor:
        """``(batch, k)`` single-perturbation indices (``-1`` padded) of the label codes."""
        return self.label_perturbations[labels.long().view(-1)]

    def perturbation_onehot(self, pert_idx: torch.Tensor) -> torch.Tensor:
        n = self.n_encoder_perturbations
        hot = F.one_hot(pert_idx.clamp(min=0), n).to(torch.float32)
        return (hot * (pert_idx >= 0).unsqueeze(-1)).sum(1)

    @staticmethod
    def _batch(tensors: dict) -> torch.Tensor | None:
        return tensors.get(REGISTRY_KEYS.BATCH_KEY)

    # ------------------------------------------------------------------ scvi-tools API
    def _get_inference_input(self, tensors: dict) -> dict:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "batch_index": self._batch(tensors),
            "labels": tensors[REGISTRY_KEYS.LABELS_KEY],
        }

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "z": inference_outputs["z"],
            "library": inference_outputs["library"],
            "batch_index": self._batch(tensors),
        }

    @staticmethod
    def _cat(batch_index, like: torch.Tensor) -> tuple[torch.Tensor]:
        """The categorical covariates of the networks (batch 0 everywhere when absent)."""
        if batch_index is None:
            batch_index = torch.zeros(like.shape[-2], 1, dtype=torch.long, device=like.device)
        return (batch_index,)

    @auto_move_data
    def inference(self, x, batch_index, labels, n_samples: int = 1) -> dict:
        pert_idx = self.perturbation_index(labels)
        x_ = torch.log1p(x)
        if self.encode_perturbation:
            x_ = torch.cat([x_, self.perturbation_onehot(pert_idx)], dim=-1)
        qz, z = self.z_encoder(x_, *self._cat(batch_index, x))
        library = torch.log(x.sum(dim=-1, keepdim=True))
        if n_samples > 1:
            z = qz.rsample((n_samples,))
            library = library.unsqueeze(0).expand(n_samples, *library.shape)
        return {"qz": qz, "z": z, "library": library, "pert_idx": pert_idx}

    @auto_move_data
    def generative(self, z, library, batch_index) -> dict:
        px_scale, _, px_rate, px_dropout = self.decoder("gene", z, library, *self._cat(batch_index, z))
        theta = torch.exp(self.px_r)
        if self.likelihood == "nb":
            px = NegativeBinomial(mu=px_rate, theta=theta, scale=px_scale)
        elif self.likelihood == "zinb":
            px = ZeroInflatedNegativeBinomial(
                mu=px_rate, theta=theta, zi_logits=px_dropout, scale=px_scale
            )
        else:
            px = Poisson(px_rate, scale=px_scale)
        return {"px": px}

    def _tc_kl(self, qz: Normal, z: torch.Tensor, pert_idx, n_obs: int) -> torch.Tensor:
        """beta-TCVAE KL decomposition by minibatch-weighted sampling, per cell."""
        batch = z.shape[0]
        log_q_zx = qz.log_prob(z).sum(-1)
        # log q(z_i | x_j) for every sample i and cell j: (B, B, D)
        mat = Normal(qz.loc.unsqueeze(0), qz.scale.unsqueeze(0)).log_prob(z.unsqueeze(1))
        log_norm = math.log(batch * max(n_obs, batch))
        log_qz = torch.logsumexp(mat.sum(-1), dim=1) - log_norm
        log_prod_qzi = (torch.logsumexp(mat, dim=1) - log_norm).sum(-1)
        log_pz = self.prior.log_prob(z, pert_idx).sum(-1)
        mutual_info = log_q_zx - log_qz
        total_corr = log_qz - log_prod_qzi
        dim_kl = log_prod_qzi - log_pz
        return mutual_info + self.tc_beta * total_corr + dim_kl

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float | torch.Tensor = 1.0,
        n_obs: int = 1,
    ) -> LossOutput:
        x = tensors[REGISTRY_KEYS.X_KEY]
        qz, z, pert_idx = inference_outputs["qz"], inference_outputs["z"], inference_outputs["pert_idx"]
        rec = -generative_outputs["px"].log_prob(x).sum(-1)
        if self.tc_beta is not None:
            kl = self._tc_kl(qz, z, pert_idx, n_obs)
        else:
            kl = self.prior.kl(qz, z, pert_idx)
        penalty = self.prior.penalty().to(x.device)
        # the prior's dataset term (the masks' KL, the hyper-prior) is warmed up with the cells' KL:
        # otherwise, while kl_weight is small, the evidence the cells give an edge is scaled down
        # and the penalty is not, and every mask is switched off before the latents form
        loss = torch.mean(rec + kl_weight * self.beta * kl) + kl_weight * penalty / max(n_obs, 1)
        return LossOutput(
            loss=loss,
            reconstruction_loss=rec,
            kl_local={"kl_z": kl},
            kl_global={"prior_penalty": penalty},
        )

    # ------------------------------------------------------------------ likelihoods
    @torch.inference_mode()
    @auto_move_data
    def log_weights(self, tensors: dict, n_samples: int, pert_idx: torch.Tensor | None = None) -> torch.Tensor:
        """``(n_samples, batch)`` importance log-weights ``log p(x|z) + log p(z|a) - log q(z|x)``.

        ``pert_idx`` overrides the perturbations the prior sees (held-out perturbations the
        label codes do not know); by default they come from the cells' labels.
        """
        inf = self.inference(**self._get_inference_input(tensors), n_samples=1)
        qz = inf["qz"]
        pert_idx = inf["pert_idx"] if pert_idx is None else pert_idx
        z = qz.sample((n_samples,))
        library = inf["library"].unsqueeze(0).expand(n_samples, *inf["library"].shape)
        gen = self.generative(z=z, library=library, batch_index=self._batch(tensors))
        x = tensors[REGISTRY_KEYS.X_KEY]
        log_px = gen["px"].log_prob(x).sum(-1)
        log_pz = self.prior.log_prob(z, pert_idx).sum(-1)
        log_qz = qz.log_prob(z).sum(-1)
        return log_px + log_pz - log_qz

    @torch.inference_mode()
    def marginal_ll(
        self,
        tensors: dict,
        n_mc_samples: int = 1000,
        n_mc_samples_per_pass: int | None = None,
        return_stderr: bool = False,
        return_mean: bool = False,
        pert_idx: torch.Tensor | None = None,
    ):
        r"""Importance-sampled ``log p(x | a)`` per cell, under this module's own prior.

        ``log p(x|a) ~= logsumexp_s(w_s) - log S`` with ``w_s = log p(x|z_s) + log p(z_s|a) -
        log q(z_s|x)``, ``z_s ~ q(z|x)``, computed in chunks of ``n_mc_samples_per_pass``
        samples so memory stays bounded.  With ``return_stderr``, also the delta-method
        Monte Carlo standard error of the estimate, ``sqrt(Var(w) / S) / mean(w)``.
        ``pert_idx`` is passed to :meth:`log_weights`.  ``n_mc_samples_per_pass=None`` sizes
        the chunk from the minibatch and the genes (:func:`samples_per_pass`), so a pass
        stays within :data:`IS_MEMORY_BUDGET`.
        """
        if n_mc_samples_per_pass is None:
            x = tensors[REGISTRY_KEYS.X_KEY]
            n_mc_samples_per_pass = samples_per_pass(int(x.shape[-1]), int(x.shape[0]))
        n_left = int(n_mc_samples)
        lse = lse2 = None
        while n_left > 0:
            n = min(n_left, int(n_mc_samples_per_pass))
            lw = self.log_weights(tensors, n, pert_idx=pert_idx).double()
            a, b = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
            lse = a if lse is None else torch.logaddexp(lse, a)
            lse2 = b if lse2 is None else torch.logaddexp(lse2, b)
            n_left -= n
        log_s = math.log(n_mc_samples)
        ll = (lse - log_s).float()
        if return_mean:
            ll = ll.mean()
        if not return_stderr:
            return ll
        # relative variance of the weights: E[w^2] / E[w]^2 - 1
        rel_var = torch.expm1((lse2 - log_s) - 2 * (lse - log_s)).clamp(min=0)
        stderr = torch.sqrt(rel_var / n_mc_samples).float()
        return ll, stderr
