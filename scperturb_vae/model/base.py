"""The shared machinery of the perturbation-prior models: one ``setup_anndata`` (the
perturbation column, the control label, combinations ``A+B``), training with a KL warm-up
suited to short runs, batch-norm recalibration, latents, importance-sampled likelihoods under
the model's own prior, the intervention graph, and weights-only save/load.

The user's classes (:mod:`scperturb_vae.model.models`) differ only in the prior they build.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin, VAEMixin
from scvi.utils import setup_anndata_dsp

from scperturb_vae.data.labels import COMBINATION_SEP, split_combination
from scperturb_vae.data.validate import validate_perturbation_adata
from scperturb_vae.module.priors import Prior
from scperturb_vae.module.vae import PerturbationVAEModule
from scperturb_vae.train.align import AlignLatents
from scperturb_vae.train.fetching import FetchingSplitter, fetching_loader, uses_fetching
from scperturb_vae.train.plan import PerturbationTrainingPlan
from scperturb_vae.train.stopping import DEFAULT_PATIENCE, ValidationPlateau

logger = logging.getLogger("scperturb_vae")

__all__ = ["MIN_ALIGN_EPOCHS", "MODULE_OPTIONS", "PerturbationModelBase", "default_kl_warmup", "latent_names"]

#: options of the shared module that every model passes through ``**module_kwargs``
MODULE_OPTIONS = {
    "n_hidden", "n_layers", "dropout_rate", "encode_perturbation", "encoder_norm", "decoder_norm", "decoder",
}



#: the fewest epochs of a run that aligns its latents (see ``train(align_latents=...)``)
MIN_ALIGN_EPOCHS = 10


def default_kl_warmup(max_epochs: int) -> int:
    """KL warm-up suited to short runs: a quarter of the epochs, between 1 and 50.

    scvi-tools' default of 400 epochs would leave a 100-epoch run at a KL weight of 0.25,
    so the prior (and with it the graph) would hardly be fitted.
    """
    return int(min(50, max(1, round(0.25 * max_epochs))))


def latent_names(n_latent: int) -> list[str]:
    width = max(2, len(str(n_latent - 1)))
    return [f"latent{i:0{width}d}" for i in range(n_latent)]


class PerturbationModelBase(VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """Shared machinery of the perturbation-prior models (not used directly).

    Subclasses implement :meth:`_make_prior` and an ``__init__`` that lists their own
    hyperparameters and calls :meth:`_build`.
    """

    _module_cls = PerturbationVAEModule
    _training_plan_cls = PerturbationTrainingPlan
    _data_splitter_cls = FetchingSplitter
    #: how minibatches are read (:data:`scperturb_vae.train.fetching.LOADERS`): ``fetch`` reads
    #: many at a time (scDataset), in memory and backed alike; ``scvi``: scvi-tools' own loader
    loader: str = "fetch"
    #: default key of the latent representation in ``adata.obsm``
    obsm_key: str = "X_svae"

    # --------------------------------------------------------------- setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        perturbation_key: str | None = None,
        control_label: str | None = None,
        layer: str | None = None,
        batch_key: str | None = None,
        min_cells: int = 20,
        allow_empty_genes: bool = False,
        **kwargs,
    ):
        """Register a perturbation screen.

        The data are validated first (raw counts, the perturbation column, the control
        label; see :func:`scperturb_vae.data.validate.validate_perturbation_adata`).  Labels written
        ``A+B`` are a cell with two perturbations.  The detected perturbation column and
        control label are recorded in the registry, so saved models reload with them.

        Parameters
        ----------
        %(param_adata)s
        perturbation_key
            Column of ``adata.obs`` with one perturbation label per cell.  Detected among
            common names (``perturbation``, ``gene``, ...) when not given.
        control_label
            The label of control cells (e.g. ``non-targeting``).  Detected among common
            spellings when not given.
        %(param_layer)s
        %(param_batch_key)s
        min_cells
            Perturbations with fewer cells are reported (not removed).
        allow_empty_genes
            Accept genes without counts (the training cells of a held-out split).
        """
        info = validate_perturbation_adata(
            adata,
            perturbation_key=perturbation_key,
            control_label=control_label,
            layer=layer,
            min_cells=min_cells,
            allow_empty_genes=allow_empty_genes,
        )
        perturbation_key = info.perturbation_key
        control_label = info.control_label
        setup_method_args = cls._get_setup_method_args(**locals())
        setup_method_args["setup_args"].pop("info", None)
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, perturbation_key),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    # --------------------------------------------------------------- construction
    def _perturbation_table(self) -> tuple[list[str], torch.Tensor]:
        """Single perturbations and the ``(n_labels, k)`` code -> perturbation index table."""
        control = self.control_label
        labels = [str(c) for c in self.get_state_registry(REGISTRY_KEYS.LABELS_KEY).categorical_mapping]
        parts = [[] if lab == control else split_combination(lab, COMBINATION_SEP) for lab in labels]
        perturbations = sorted({p for ps in parts for p in ps})
        index = {p: i for i, p in enumerate(perturbations)}
        k = max(1, max(len(ps) for ps in parts))
        table = torch.full((len(labels), k), -1, dtype=torch.long)
        for row, ps in enumerate(parts):
            for col, p in enumerate(ps):
                table[row, col] = index[p]
        return perturbations, table

    def _build(self, prior: Prior, n_latent: int, likelihood: str, module_kwargs: dict, **fixed) -> None:
        unknown = set(module_kwargs) - MODULE_OPTIONS
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; the network options are {sorted(MODULE_OPTIONS)}")
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            label_perturbations=self._label_table,
            prior=prior,
            n_batch=self.summary_stats.n_batch,
            n_latent=n_latent,
            likelihood=likelihood,
            **module_kwargs,
            **fixed,
        )
        self.latent_names = latent_names(n_latent)

    def _init_base(self, adata: AnnData | None) -> int:
        super().__init__(adata)
        self.perturbations, self._label_table = self._perturbation_table()
        return len(self.perturbations)

    def _perturbation_cell_counts(self) -> torch.Tensor:
        """Cells of each single perturbation in the registered data (``A+B`` counts for both)."""
        n_pert = len(self.perturbations)
        if self.adata is None:
            return torch.zeros(n_pert)
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
        per_label = np.bincount(codes.astype(np.int64), minlength=self._label_table.shape[0])
        counts = torch.zeros(n_pert)
        for label_row, n in zip(self._label_table, per_label):
            for p in label_row[label_row >= 0].tolist():
                counts[p] += float(n)
        return counts

    # --------------------------------------------------------------- properties
    @property
    def perturbation_key(self) -> str:
        return self.adata_manager.registry["setup_args"]["perturbation_key"]

    @property
    def control_label(self) -> str:
        return self.adata_manager.registry["setup_args"]["control_label"]

    # --------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int | None = None,
        *,
        lr: float = 1e-3,
        lr_prior: float | None = None,
        n_epochs_kl_warmup: int | None = None,
        batch_size: int = 128,
        plan_kwargs: dict | None = None,
        align_latents: float | tuple[float, ...] | None = 0.4,
        stop_on_plateau: int | None = DEFAULT_PATIENCE,
        loader: str = "fetch",
        **kwargs,
    ):
        """Train with scvi-tools' trainer (all its options pass through).

        Parameters
        ----------
        max_epochs
            Number of epochs (scvi-tools' heuristic from the number of cells when None).
        lr
            Learning rate of the network.
        lr_prior
            Learning rate of the prior parameters (default ``10 * lr``); they have their own
            Adam group with a small ``eps`` (see :mod:`scperturb_vae.train.plan`).
        n_epochs_kl_warmup
            Epochs over which the KL weight rises from 0 to 1 (default
            :func:`default_kl_warmup`).
        batch_size
            Minibatch size.
        plan_kwargs
            Further :class:`~scperturb_vae.train.plan.PerturbationTrainingPlan` arguments.
        align_latents
            sVAE+ / sVAE with the shared-mask estimator: after this fraction of the epochs,
            rotate the latents once into the basis where the perturbations' shifts are
            sparsest (:class:`~scperturb_vae.train.align.AlignLatents`); ``None`` or 0: never.
            Runs shorter than :data:`MIN_ALIGN_EPOCHS` are not aligned: their shifts are
            still noise, and the rotation would be chosen by it.
        stop_on_plateau
            Early stopping: stop once the validation loss has not improved for this many
            epochs, watched only after the KL warm-up and the alignment
            (:class:`~scperturb_vae.train.stopping.ValidationPlateau`); the epoch it stopped
            after is ``self.stopped_epoch`` (None: it ran all ``max_epochs``).  ``None`` or 0
            trains every epoch.  Needs validation cells (``train_size < 1``).
        loader
            How minibatches are read (:mod:`scperturb_vae.train.fetching`): ``"fetch"`` reads
            many at a time with scDataset (fast from a backed, on-disk AnnData; the same
            minibatches in memory), ``"scvi"`` uses scvi-tools' own loader.  The passes after
            training (batch-norm recalibration, latents, likelihoods) read the same way.
        **kwargs
            Passed to :meth:`scvi.model.base.UnsupervisedTrainingMixin.train` (``accelerator``,
            ``devices``, ``early_stopping``, ``train_size``, Lightning trainer arguments...).
        """
        if max_epochs is None:
            from scvi.model._utils import get_max_epochs_heuristic

            max_epochs = get_max_epochs_heuristic(self.adata.n_obs)
        plan = {
            "lr": lr,
            "lr_prior": lr_prior,
            "n_epochs_kl_warmup": default_kl_warmup(max_epochs) if n_epochs_kl_warmup is None else n_epochs_kl_warmup,
        }
        plan.update(plan_kwargs or {})
        prior = self.module.prior
        start = plan["n_epochs_kl_warmup"] or 0
        if align_latents and getattr(prior, "kl_estimator", None) == "shared" and max_epochs >= MIN_ALIGN_EPOCHS:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), AlignLatents(at=align_latents)]
            at = align_latents if isinstance(align_latents, (int, float)) else max(align_latents)
            start = max(start, int(round(float(at) * max_epochs)))
        plateau = None
        if stop_on_plateau and (kwargs.get("train_size") or 0.9) < 1:
            plateau = ValidationPlateau(start_epoch=start + 1, patience=int(stop_on_plateau))
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), plateau]
            kwargs.setdefault("check_val_every_n_epoch", 1)
        uses_fetching(loader)  # checks the name before training starts
        self.loader = loader
        kwargs["datasplitter_kwargs"] = {**(kwargs.get("datasplitter_kwargs") or {}), "loader": loader}
        result = super().train(max_epochs=max_epochs, batch_size=batch_size, plan_kwargs=plan, **kwargs)
        self.stopped_epoch = None if plateau is None else plateau.stopped_epoch
        #: epochs where training changed regime, for the loss curve and the run report
        self.training_marks = {"KL warm-up ends": plan["n_epochs_kl_warmup"] or 0}
        if start > (plan["n_epochs_kl_warmup"] or 0):
            self.training_marks["latents aligned"] = start
        if self.stopped_epoch is not None:
            self.training_marks["early stop"] = self.stopped_epoch
        self.recalibrate_batch_norm(batch_size=batch_size)
        return result

    def _make_data_loader(self, adata, indices=None, batch_size=None, shuffle=False, data_loader_class=None,
                          **data_loader_kwargs):
        """scDataset's fetching loader, or scvi-tools' (see :attr:`loader`)."""
        manager = self.get_anndata_manager(adata)
        if data_loader_class is not None or manager is None or not uses_fetching(self.loader):
            return super()._make_data_loader(adata, indices=indices, batch_size=batch_size, shuffle=shuffle,
                                             data_loader_class=data_loader_class, **data_loader_kwargs)
        from scvi import settings

        indices = np.arange(manager.adata.n_obs) if indices is None else np.asarray(indices)
        if not shuffle and np.any(np.diff(indices) < 0):  # cells asked for in another order than the rows'
            return super()._make_data_loader(adata, indices=indices, batch_size=batch_size, shuffle=shuffle,
                                             **data_loader_kwargs)
        return fetching_loader(manager, indices, batch_size=batch_size or settings.batch_size, shuffle=shuffle,
                               seed=settings.seed)

    @torch.no_grad()
    def recalibrate_batch_norm(self, batch_size: int = 128) -> None:
        """Recompute batch-norm statistics for the final weights (one pass over the training cells).

        Batch norm evaluates with running averages (momentum 0.01) that lag behind the
        weights; on deep-sequenced data that moved held-out likelihoods by tens of nats
        between epochs.  This replaces them with the exact mean and variance of each
        batch-norm layer's input over the training cells under the trained network (the
        forward pass runs as in training, so downstream layers see what they were trained on).
        """
        norms = [m for m in self.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        sums: dict[torch.nn.Module, list] = {m: [0.0, 0.0, 0] for m in norms}

        def record(module, inputs):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            acc = sums[module]
            acc[0] = acc[0] + x.sum(0)
            acc[1] = acc[1] + x.square().sum(0)
            acc[2] += x.shape[0]

        hooks = [m.register_forward_pre_hook(record) for m in norms]
        try:
            loader = self._make_data_loader(adata=self.adata, indices=getattr(self, "train_indices", None),
                                            batch_size=batch_size, shuffle=True)
            self.module.train()
            for tensors in loader:
                inference = self.module.inference(**self.module._get_inference_input(tensors))
                self.module.generative(**self.module._get_generative_input(tensors, inference))
        finally:
            for hook in hooks:
                hook.remove()
            self.module.eval()
        for m, (total, total_sq, n) in sums.items():
            mean = total / n
            var = (total_sq / n - mean.square()).clamp(min=0) * n / max(n - 1, 1)  # unbiased, as BN keeps
            m.running_mean.copy_(mean.to(m.running_mean.dtype))
            m.running_var.copy_(var.to(m.running_var.dtype))

    # --------------------------------------------------------------- latents
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices=None,
        give_mean: bool = True,
        mc_samples: int = 5_000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader=None,
        **data_loader_kwargs,
    ) -> np.ndarray:
        """Posterior means (or samples with ``give_mean=False``), cells x latents.

        As scvi-tools' method, but written into one preallocated array: keeping one small
        tensor per minibatch between the dense minibatches left the freed minibatch memory
        resident (glibc heap fragmentation), about 3x the CSR matrix on 200,000 cells.
        Other uses (``return_dist``, a ``dataloader``) are scvi-tools' own.
        """
        if return_dist or dataloader is not None or data_loader_kwargs:
            return super().get_latent_representation(
                adata, indices, give_mean, mc_samples, batch_size, return_dist, dataloader, **data_loader_kwargs
            )
        self._check_if_trained(warn=False)
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        n = adata.n_obs if indices is None else len(indices)
        out = np.empty((n, self.module.n_latent), dtype=np.float32)
        start = 0
        for tensors in loader:
            outputs = self.module.inference(**self.module._get_inference_input(tensors))
            z = outputs["qz"].loc if give_mean else outputs["z"]
            stop = start + z.shape[0]
            out[start:stop] = z.detach().cpu().numpy()
            start = stop
        if start != n:  # pragma: no cover - the loader covers every requested cell once
            raise RuntimeError(f"latent representation covered {start} of {n} cells")
        return out

    # --------------------------------------------------------------- saving
    def save(self, dir_path, prefix: str | None = None, overwrite: bool = False, save_anndata: bool = False,
             **kwargs) -> None:
        """Save the model without pickle: ``weights.pt`` (tensors only) and ``model.json``.

        See :mod:`scperturb_vae.model.persist`.  The folder is written atomically; an existing one
        is refused unless ``overwrite``.  ``save_anndata`` also writes ``adata.h5ad``.
        """
        from scperturb_vae.model.persist import save_model

        if prefix:
            raise TypeError("prefix is not supported: a model folder holds one model")
        save_model(self, dir_path, overwrite=overwrite, save_anndata=save_anndata)

    @classmethod
    def load(cls, dir_path, adata: AnnData | None = None, accelerator: str = "auto", device: int | str = "auto",
             **kwargs):
        """Load a model saved by :meth:`save` onto ``adata``, never unpickling.

        ``adata`` must hold the model's genes in the model's order; it is set up again with
        the saved registry (perturbation column, control label, label codes of training).
        Incompatible folders (another class, a newer format, an older pickled ``model.pt``,
        other genes, weights of another shape) raise :class:`~scperturb_vae.errors.InputError`
        with one line.
        """
        from scperturb_vae.model.persist import load_model

        unknown = set(kwargs) - {"prefix", "backup_url"}
        if unknown or kwargs.get("prefix") or kwargs.get("backup_url"):
            raise TypeError(f"unsupported load option(s): {sorted(kwargs)}")
        return load_model(cls, dir_path, adata, accelerator=accelerator, device=device)

    # --------------------------------------------------------------- outputs
    @torch.inference_mode()
    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices=None,
        n_mc_samples: int = 1000,
        batch_size: int | None = 128,
        n_mc_samples_per_pass: int | None = None,
        return_mean: bool = False,
        return_stderr: bool = False,
    ):
        """Per-cell importance-sampled ``log p(x | a)`` under the model's own prior.

        Unlike scvi-tools' version (which uses ``N(0, I)`` and averages minibatch means),
        this returns one value per cell (``return_mean=False``) or their exact mean, and with
        ``return_stderr`` also each cell's Monte Carlo standard error.
        """
        self._check_if_trained(warn=False)
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        self.module.eval()
        values, errors = [], []
        for tensors in loader:
            ll, se = self.module.marginal_ll(
                tensors,
                n_mc_samples=n_mc_samples,
                n_mc_samples_per_pass=n_mc_samples_per_pass,
                return_stderr=True,
            )
            values.append(ll.cpu().numpy())
            errors.append(se.cpu().numpy())
        ll = np.concatenate(values)
        se = np.concatenate(errors)
        if return_mean:
            mean = float(ll.mean())
            return (mean, float(np.sqrt(np.sum(se**2)) / len(se))) if return_stderr else mean
        return (ll, se) if return_stderr else ll

    def get_intervention_graph(self, adata: AnnData | None = None, latent: np.ndarray | None = None) -> pd.DataFrame:
        """Perturbation x latent probabilities that the perturbation moves the latent.

        sVAE+ / sVAE: the mask probabilities ``pi``.  iVAE: ``1 - exp(-KL(p(z_i|a) || N(0,1)))``
        of its prior.  VAE (no perturbation parameters): the same score computed from the
        data, ``1 - exp(-d^2 / 2)`` with ``d`` the standardised difference between the mean
        latent of the perturbation's cells and of the control cells (the KL between two unit
        Gaussians ``d`` apart); it needs the registered AnnData (or ``adata``), and reuses
        ``latent`` (its posterior means) when given.
        """
        graph = self.module.prior.intervention_graph()
        if graph is not None:
            values = graph.detach().cpu().numpy()[: len(self.perturbations)]
        else:
            values = self._posterior_shift_score(adata, latent)
        return pd.DataFrame(
            values.astype(np.float64),
            index=pd.Index(self.perturbations, name="perturbation"),
            columns=pd.Index(self.latent_names, name="latent"),
        )

    def get_edge_evidence(self) -> pd.DataFrame | None:
        """Perturbation x latent log Bayes factors (nats) of the edges, where the prior has them.

        sVAE+ with the shared-mask estimator: ``logit(rho) + log K``, the evidence all the
        cells of a perturbation gave the edge (an edge is drawn when it exceeds ``log K``);
        see :meth:`scperturb_vae.module.priors.SparseShiftPrior.edge_evidence`.  ``None``
        for the other models and estimators.
        """
        evidence = getattr(self.module.prior, "edge_evidence", lambda: None)()
        if evidence is None:
            return None
        return pd.DataFrame(
            evidence.detach().cpu().numpy()[: len(self.perturbations)].astype(np.float64),
            index=pd.Index(self.perturbations, name="perturbation"),
            columns=pd.Index(self.latent_names, name="latent"),
        )

    def predict(self, perturbations, *, n_cells: int | None = 1000, sample_counts: bool = False, seed: int = 0):
        """Counterfactual expression of trained perturbations and their combinations ``A+B``.

        Control cells are moved by the prior's transport to ``p(z | a)`` and decoded; returns
        a :class:`~scperturb_vae.model.predict.Prediction` (normalised means per target, the
        ATE against control, sampled counts when asked).  See :mod:`scperturb_vae.model.predict`
        for the estimator.
        """
        from scperturb_vae.model.predict import predict_expression

        self._check_if_trained(warn=False)
        return predict_expression(self, perturbations, n_cells=n_cells, sample_counts=sample_counts, seed=seed)

    def get_signed_graph(self, adata: AnnData | None = None, latent: np.ndarray | None = None) -> pd.DataFrame:
        """The graph in long form, with the direction and size of each effect.

        One row per perturbation x latent: ``probability`` (:meth:`get_intervention_graph`),
        ``shift_sd`` (the mean posterior latent of the perturbation's cells minus the control
        cells', in control sd: negative when the perturbation lowers the latent),
        ``prior_shift`` (the mean of ``p(z | a)`` in prior sd where the prior has one, else
        NaN), ``n_cells`` (cells carrying the perturbation, in combinations too),
        ``evidence`` (:meth:`get_edge_evidence`, NaN where the prior has none) and
        ``direction`` (``"up"`` / ``"down"`` by the sign of ``shift_sd``).  Rows are sorted by
        probability, then by the size of the shift.  ``latent`` reuses posterior means of
        ``adata``'s cells.
        """
        z = self.get_latent_representation(adata) if latent is None else latent
        graph = self.get_intervention_graph(adata, latent=z)
        shift, counts = self._posterior_shifts(adata, z)
        prior = self.module.prior.prior_shift()
        prior = (np.full(shift.shape, np.nan) if prior is None
                 else prior.detach().cpu().numpy()[: len(self.perturbations)].astype(np.float64))
        evidence = self.get_edge_evidence()
        evidence = np.full(shift.shape, np.nan) if evidence is None else evidence.to_numpy()
        n_p, n_l = shift.shape
        out = pd.DataFrame({
            "perturbation": np.repeat(np.asarray(self.perturbations, dtype=object), n_l),
            "latent": np.tile(np.asarray(self.latent_names, dtype=object), n_p),
            "probability": graph.to_numpy().ravel(),
            "shift_sd": shift.ravel(),
            "prior_shift": prior.ravel(),
            "n_cells": np.repeat(counts.astype(np.int64), n_l),
            "evidence": evidence.ravel(),
        })
        out["direction"] = np.where(out["shift_sd"] < 0, "down", "up")
        order = np.lexsort((-out["shift_sd"].abs().to_numpy(), -out["probability"].to_numpy()))
        return out.iloc[order].reset_index(drop=True)

    def _posterior_shifts(self, adata: AnnData | None, latent: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(P x D standardised mean shift of the posterior latents against the controls, P cells)``."""
        adata = self._validate_anndata(adata)
        z = self.get_latent_representation(adata) if latent is None else latent
        labels = adata.obs[self.perturbation_key].astype(str).to_numpy()
        control = labels == self.control_label
        mu0, sd0 = z[control].mean(0), z[control].std(0) + 1e-6
        index = {p: i for i, p in enumerate(self.perturbations)}
        sums = np.zeros((len(self.perturbations), z.shape[1]))
        counts = np.zeros(len(self.perturbations))
        # one pass over the cells: sums per label, then per perturbation (a label A+B adds to both)
        uniq, codes = np.unique(labels[~control], return_inverse=True)
        label_sums = np.zeros((len(uniq), z.shape[1]))
        np.add.at(label_sums, codes, z[~control])
        label_counts = np.bincount(codes, minlength=len(uniq))
        for lab, lab_sum, lab_count in zip(uniq, label_sums, label_counts):
            for p in split_combination(lab, COMBINATION_SEP):
                if p in index:
                    sums[index[p]] += lab_sum
                    counts[index[p]] += lab_count
        return (sums / np.maximum(counts, 1)[:, None] - mu0) / sd0, counts

    def _posterior_shift_score(self, adata: AnnData | None, latent: np.ndarray | None) -> np.ndarray:
        d, _ = self._posterior_shifts(adata, latent)
        return 1.0 - np.exp(-0.5 * d**2)
