r"""An injective decoder against posterior collapse: the latent-identifiable VAE's ``g2(B^T g1(z))``.

Wang, Blei and Cunningham (NeurIPS 2021) show that posterior collapse is latent
non-identifiability: a latent the likelihood cannot tell apart from the prior collapses.  A
decoder that is injective in ``z`` rules that out.  They build it from Brenier maps, the
gradients of input-convex neural networks (ICNNs, Amos et al. 2017): the gradient of a strictly
convex function is injective.

:class:`InjectiveDecoder` decodes a latent ``z`` (``d`` dims) to a cell's gene proportions as

``g1 = grad psi1`` on the latent space (``d -> d``), ``B`` a full-rank linear map into a
reduced space of ``m >= d`` dims (``d -> m``), ``g2 = grad psi2`` on that space (``m -> m``),
then a linear head to the genes (``m -> G``, ``G >= m``) and the softmax of scVI's decoder.

Every step is injective: ``g1`` and ``g2`` are gradients of strictly convex functions, ``B``
and the head have full column rank (trained unconstrained, they keep it generically; the
tests check it numerically), and the softmax only forgets a shift along the all-ones vector,
which a full-rank head of ``G > m`` genes does not reach.  The batch enters the head only, as
an additive term of the logits, so the map is injective in ``z`` for every batch.

**Why a reduced space.**  The seeds' ``g2`` is a Brenier map on the data space; on 2,000 genes
an ICNN needs 2,000-wide input weights in every layer and a 2,000 x 2,000 Jacobian in the
second-derivative training; on ``m`` dims (the decoder's hidden width, 128 by default) the cost
is that of scVI's hidden layer, and injectivity is kept by the full-rank head.

:class:`ICNN` computes its gradient map in closed form (a backward pass written out), so the
map works under ``torch.inference_mode`` and training differentiates through it (the second
derivatives of the seeds); the tests compare it with autograd's gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ICNN", "InjectiveDecoder"]


def _nonneg(raw: torch.Tensor) -> torch.Tensor:
    return F.softplus(raw)


class ICNN(nn.Module):
    r"""Input-convex network ``psi: R^n -> R`` and its gradient map (a Brenier map).

    ``h_1 = softplus(A_0 x + b_0)``, ``h_{k+1} = softplus(W_k h_k + A_k x + b_k)``,
    ``psi(x) = a . h_L + (alpha / 2) |x|^2``, with ``W_k = softplus(V_k) >= 0`` and
    ``a = softplus(.) >= 0``: softplus is convex and non-decreasing, so ``psi`` is convex, and
    strictly convex through ``alpha > 0``, so its gradient is injective.
    """

    def __init__(self, n_input: int, n_hidden: int = 64, n_layers: int = 2, alpha: float = 1.0):
        super().__init__()
        if n_layers < 1:
            raise ValueError("an ICNN needs at least one hidden layer")
        self.alpha = float(alpha)
        self.inputs = nn.ModuleList([nn.Linear(n_input, n_hidden) for _ in range(n_layers)])
        # raw hidden-to-hidden weights; the layer uses softplus(raw) >= 0
        self.hidden_raw = nn.ParameterList(
            [nn.Parameter(torch.randn(n_hidden, n_hidden) / math.sqrt(n_hidden) - 2.0) for _ in range(n_layers - 1)]
        )
        self.output_raw = nn.Parameter(torch.full((n_hidden,), -1.0))
        for layer in self.inputs:
            nn.init.normal_(layer.weight, std=1.0 / math.sqrt(n_input))
            nn.init.zeros_(layer.bias)

    def hidden_weights(self) -> list[torch.Tensor]:
        """The (non-negative) hidden-to-hidden weights and the output weights."""
        return [_nonneg(v) for v in self.hidden_raw] + [_nonneg(self.output_raw)]

    def _pre_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        pre = [self.inputs[0](x)]
        for layer, raw in zip(self.inputs[1:], self.hidden_raw):
            pre.append(F.softplus(pre[-1]) @ _nonneg(raw).T + layer(x))
        return pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``psi(x)``, one value per row."""
        pre = self._pre_activations(x)
        return F.softplus(pre[-1]) @ _nonneg(self.output_raw) + 0.5 * self.alpha * x.square().sum(-1)

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``grad psi(x)`` in closed form (the backward pass of :meth:`forward` written out)."""
        pre = self._pre_activations(x)
        delta = torch.sigmoid(pre[-1]) * _nonneg(self.output_raw)  # d psi / d pre_L
        grad = delta @ self.inputs[-1].weight
        for k in range(len(pre) - 2, -1, -1):
            delta = (delta @ _nonneg(self.hidden_raw[k])) * torch.sigmoid(pre[k])
            grad = grad + delta @ self.inputs[k].weight
        return grad + self.alpha * x


class InjectiveDecoder(nn.Module):
    """``softmax(head(g2(B g1(z))) + batch)``: the decoder of :mod:`this module <scperturb_vae.module.injective>`.

    Called as scvi-tools' :class:`~scvi.nn.DecoderSCVI` (``decoder("gene", z, library,
    batch_index)``) and returns the same ``(px_scale, px_r, px_rate, px_dropout)``.
    """

    def __init__(self, n_latent: int, n_output: int, *, n_batch: int = 0, n_hidden: int = 128,
                 n_icnn_hidden: int = 64, n_icnn_layers: int = 2):
        super().__init__()
        width = max(n_latent, min(n_hidden, n_output))
        self.g1 = ICNN(n_latent, n_icnn_hidden, n_icnn_layers)
        self.B = nn.Linear(n_latent, width)
        self.g2 = ICNN(width, n_icnn_hidden, n_icnn_layers)
        self.head = nn.Linear(width, n_output)
        self.dropout_head = nn.Linear(width, n_output)
        self.n_batch = int(n_batch)
        self.batch_effect = nn.Embedding(max(1, self.n_batch), n_output) if self.n_batch > 1 else None
        if self.batch_effect is not None:
            nn.init.zeros_(self.batch_effect.weight)

    @torch.no_grad()
    def rotate_latents(self, rotation: torch.Tensor) -> list[nn.Parameter]:
        """Make the decoder take ``z_new = z_old @ rotation`` (orthogonal) and decode as before.

        ``psi1`` of the rotated latent is ``psi1(z_new @ rotation.T)``: its input weights
        become ``A_k @ rotation``; its gradient then comes out rotated (``g1(z_old) @
        rotation``), which ``B``'s weight ``B @ rotation`` takes back.  Returns the changed
        parameters.
        """
        changed = []
        for layer in self.g1.inputs:
            layer.weight.copy_(layer.weight @ rotation)
            changed.append(layer.weight)
        self.B.weight.copy_(self.B.weight @ rotation)
        return [*changed, self.B.weight]

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """The injective part, ``g2(B g1(z))`` (``m`` dims)."""
        return self.g2.gradient(self.B(self.g1.gradient(z)))

    def forward(self, dispersion: str, z: torch.Tensor, library: torch.Tensor, batch_index=None, *others):
        h = self.embed(z)
        logits = self.head(h)
        if self.batch_effect is not None and batch_index is not None:  # (cells, genes), broadcast over samples
            logits = logits + self.batch_effect(batch_index.view(-1).long())
        px_scale = torch.softmax(logits, dim=-1)
        px_rate = torch.exp(library) * px_scale
        return px_scale, None, px_rate, self.dropout_head(h)
