"""The held-out likelihood of :func:`scperturb_vae.tl.heldout_nll` and ``scvae evaluate``:
NLL bars per model and setting, the few-shot curve (``nll.png``, ``fewshot.png``), and the
predicted effects' scores of ``scvae evaluate --predict`` (``predict/metrics.png``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.pl.base import panel_grid, single_panel
from scperturb_vae.pl.base import save as save_figure

__all__ = ["fewshot", "heldout_nll", "prediction_scores"]

NLL_COLUMNS = ("model", "setting", "nll", "stderr")
FEWSHOT_COLUMNS = ("model", "adaptation_cells_per_perturbation", "n_adaptation_cells", "nll", "stderr")


def _frame(result, attr: str, columns: Sequence[str], what: str) -> pd.DataFrame:
    from scperturb_vae.tl.evaluate import HeldoutResult

    if isinstance(result, HeldoutResult):
        frame = getattr(result, attr)
    elif isinstance(result, pd.DataFrame):
        frame = result
    else:
        raise InputError(f"{what} takes the result of tl.heldout_nll or its {attr} table, not {type(result).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"the {attr} table lacks column(s) {', '.join(missing)}")
    if frame.empty:
        raise InputError(f"the {attr} table is empty")
    return frame


def heldout_nll(result, *, title: str | None = None, ax=None, save: str | os.PathLike | None = None):
    """Bars of the held-out NLL per model and setting, with Monte Carlo standard errors.

    Parameters
    ----------
    result
        What :func:`scperturb_vae.tl.heldout_nll` returns, or its ``table`` (columns
        ``model``, ``setting``, ``nll``, ``stderr``; ``scvae evaluate``'s ``nll.csv``).
    title
        The title (default ``"held-out perturbations: NAME"``).
    ax
        One Axes.
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        x: the models (tick labels), one bar per setting (``heldout adapted``, ``heldout
        zeroshot``, ``heldin``: the legend), y: ``NLL per cell (nats, lower is better)``.
    """
    from scperturb_vae.tl.evaluate import SETTINGS_ORDER

    table = _frame(result, "table", NLL_COLUMNS, "pl.heldout_nll")
    holdout = result.holdout if not isinstance(result, pd.DataFrame) else {}
    models = list(dict.fromkeys(table["model"].astype(str)))
    settings = [s for s in SETTINGS_ORDER if s in set(table["setting"])]
    settings += [s for s in dict.fromkeys(table["setting"]) if s not in settings]
    fig, panel = single_panel(ax, (1.8 + 1.6 * len(models), 3.8), "heldout_nll")
    width = 0.8 / max(len(settings), 1)
    for j, s in enumerate(settings):
        sub = table[table["setting"] == s].assign(model=lambda d: d["model"].astype(str)).set_index("model")
        sub = sub.reindex(models)
        x = np.arange(len(models)) + (j - (len(settings) - 1) / 2) * width
        panel.bar(x, sub["nll"], width, yerr=sub["stderr"], label=s.replace("_", " "), capsize=3)
    panel.set_xticks(np.arange(len(models)))
    panel.set_xticklabels(models)
    finite = table["nll"][np.isfinite(table["nll"].astype(float))]
    if len(finite):
        span = float(finite.max() - finite.min()) or 1.0
        panel.set_ylim(float(finite.min()) - 0.5 * span, float(finite.max()) + 0.3 * span)
    panel.set_xlabel("model")
    panel.set_ylabel("NLL per cell (nats, lower is better)")
    name = holdout.get("name") if isinstance(holdout, Mapping) else None
    panel.set_title(title or (f"held-out perturbations: {name}" if name else "held-out NLL"))
    panel.legend(frameon=False, fontsize=8)
    save_figure(fig, save)
    return fig


def fewshot(result, *, title: str | None = None, ax=None, save: str | os.PathLike | None = None):
    """The few-shot curve: held-out NLL against the number of adaptation cells, per model.

    Parameters
    ----------
    result
        What :func:`scperturb_vae.tl.heldout_nll` returns, or its ``fewshot`` table
        (columns ``model``, ``adaptation_cells_per_perturbation``, ``n_adaptation_cells``,
        ``nll``, ``stderr``).
    title
        The title (default ``"few-shot adaptation"``).
    ax
        One Axes.
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        x: ``adaptation cells (all held-out perturbations)``, y: ``held-out NLL per cell
        (nats)``, one line with error bars per model (the legend); each point is annotated
        with its cells per perturbation (``0``, ``10``, ``all``...).
    """
    curve = _frame(result, "fewshot", FEWSHOT_COLUMNS, "pl.fewshot")
    fig, panel = single_panel(ax, (5.2, 3.8), "fewshot")
    for model, g in curve.groupby("model", sort=False):
        x = g["n_adaptation_cells"].to_numpy(dtype=float)
        y = g["nll"].to_numpy(dtype=float)
        panel.errorbar(x, y, yerr=g["stderr"].to_numpy(dtype=float), marker="o", label=str(model), capsize=3)
        for xi, yi, n in zip(x, y, g["adaptation_cells_per_perturbation"]):
            panel.annotate(str(n), (xi, yi), textcoords="offset points", xytext=(3, 4), fontsize=7, color="0.35")
    panel.set_xlabel("adaptation cells (all held-out perturbations)")
    panel.set_ylabel("held-out NLL per cell (nats)")
    panel.set_title(title or "few-shot adaptation")
    panel.legend(frameon=False, fontsize=8)
    save_figure(fig, save)
    return fig


def prediction_scores(metrics: pd.DataFrame, *, metric: str = "ate_pearson_top20", ax=None,
                      save: str | os.PathLike | None = None):
    """Predicted-effect scores of ``scvae evaluate --predict`` against the adaptation cells ``k``.

    ``metrics`` is ``predict/metrics.csv`` (``method``, ``k``, ``metric``, and optionally
    ``group``: one panel per group of perturbations, single and combination).  Methods scored
    at several ``k`` are lines; those without adaptation (``control``, ``training_mean``,
    ``additive``, a model's zero-shot point alone) are horizontal dashed lines.  Returns the
    figure (x: k in the order of the table, y: ``metric``).
    """
    missing = [c for c in ("method", "k", metric) if c not in metrics.columns]
    if missing or metrics.empty:
        raise InputError(f"the metrics table lacks column(s) {', '.join(missing) or '(it is empty)'}")
    metrics = metrics.assign(k=metrics["k"].astype(str))
    if "group" not in metrics.columns:
        metrics = metrics.assign(group="all")
    groups = [g for g in dict.fromkeys(metrics["group"].astype(str)) if g != "all"] or ["all"]
    ks = ["0", *(k for k in dict.fromkeys(metrics["k"]) if k != "0")]
    fig, axes = panel_grid(ax, len(groups), len(groups), (5.2, 3.8), "prediction_scores")
    for panel, group in zip(axes, groups):
        for i, (method, g) in enumerate(metrics[metrics["group"] == group].groupby("method", sort=False)):
            colour = f"C{i % 10}"
            values = g[metric].to_numpy(dtype=float)
            if len(g) == 1 or not np.isfinite(values[1:]).any():
                if np.isfinite(values[0]):
                    panel.axhline(values[0], ls="--", lw=1, label=str(method), color=colour)
                continue
            panel.plot([ks.index(k) for k in g["k"]], values, marker="o", label=str(method), color=colour)
        panel.set_xticks(range(len(ks)), ks)
        panel.set_xlabel("adaptation cells per held-out perturbation (k)")
        panel.set_ylabel(metric.replace("_", " "))
        panel.set_title(f"held-out predicted effects: {group}")
        panel.legend(frameon=False, fontsize=7)
    save_figure(fig, save)
    return fig
