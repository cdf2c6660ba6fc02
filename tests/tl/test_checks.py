"""The one validation of settings shared by tl, scvae train and scvae evaluate."""

from __future__ import annotations

import pytest

from scperturb_vae.errors import InputError
from scperturb_vae.tl.checks import check_fewshot, check_settings, parse_fewshot

GOOD = dict(model="svae+", likelihood="nb", n_latent=10, max_epochs=None, batch_size=128, lr=1e-3, seed=0,
            adapt_fraction=0.5, n_importance=1, heldin_cells=0)


def test_good_settings_pass_in_both_spellings():
    check_settings(**GOOD)
    check_settings(flags=True, **GOOD)


@pytest.mark.parametrize(
    ("name", "value", "python", "cli"),
    [
        ("n_latent", 0, "n_latent must be at least 1, not 0", "--n-latent must be at least 1, not 0"),
        ("batch_size", 1, "batch_size must be at least 2", "--batch-size must be at least 2"),
        ("max_epochs", 0, "max_epochs must be at least 1", "--max-epochs must be at least 1"),
        ("seed", -1, "seed must be at least 0", "--seed must be at least 0"),
        ("n_latent", 2.5, "n_latent must be an integer", "--n-latent must be an integer"),
        ("n_latent", True, "n_latent must be an integer", "--n-latent must be an integer"),
        ("lr", 0.0, "lr must be a positive number", "--lr must be a positive number"),
        ("lr", float("nan"), "lr must be a positive number", "--lr must be a positive number"),
        ("adapt_fraction", 1.0, "adapt_fraction must be between 0 and 1", "--adapt-fraction must be between 0 and 1"),
        ("model", "svae++", "unknown model 'svae++'", "unknown model 'svae++'"),
        ("likelihood", "gauss", "unknown likelihood 'gauss'", "unknown likelihood 'gauss'"),
    ],
)
def test_each_bad_setting_is_named_as_the_caller_spells_it(name, value, python, cli):
    with pytest.raises(InputError, match=f"^{python.replace('+', '[+]')}"):
        check_settings(**{**GOOD, name: value})
    with pytest.raises(InputError, match=f"^{cli.replace('+', '[+]')}"):
        check_settings(flags=True, **{**GOOD, name: value})


def test_the_edges_are_allowed():
    check_settings(n_latent=1, batch_size=2, seed=0, heldin_cells=0, ll_cells=0, adapt_fraction=1e-9)


def test_an_unknown_setting_is_a_bug_of_the_caller():
    with pytest.raises(ValueError, match="no rule"):
        check_settings(n_latnet=3)


def test_fewshot_sizes():
    assert parse_fewshot("50,0,all,10") == [0, 10, 50, "all"]
    assert check_fewshot((10, "all", 0)) == [0, 10, "all"]
    with pytest.raises(InputError):
        check_fewshot((-1,))
    with pytest.raises(InputError):
        check_fewshot(("some",))
