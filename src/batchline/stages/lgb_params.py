"""Checking the `lightgbm:` mapping of stages.train.params against LightGBM itself.

LightGBM's C library lists every parameter it knows with its aliases
(`LGBM_DumpParamAliases`), so a misspelt name is caught before any data is
read instead of being ignored with a warning deep in the training log.
Names that batchline sets from its own fields, or that would make LightGBM
read files or reinterpret the matrix, are refused with the field to use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from lightgbm.basic import _ConfigAliases

# Parameters batchline sets from its own spec fields: use those instead.
OWN_FIELDS = {
    "objective": "objective", "num_class": "objective (classes come from the label)",
    "num_iterations": "num_boost_round", "early_stopping_round": "early_stopping_rounds",
    "num_leaves": "num_leaves", "learning_rate": "learning_rate",
    "min_data_in_leaf": "min_data_in_leaf", "feature_fraction": "feature_fraction",
    "num_threads": "num_threads", "seed": "seed", "categorical_feature": "categorical",
}
# File, task and column-layout parameters: the stage owns its inputs and outputs.
REFUSED = {"task", "data", "valid", "input_model", "output_model", "output_result",
           "label_column", "weight_column", "group_column", "ignore_column", "header",
           "save_binary", "snapshot_freq", "convert_model", "convert_model_language",
           "machines", "machine_list_filename", "config", "init_score_file",
           "forcedsplits_filename", "forcedbins_filename", "saved_feature_importance_type"}


@lru_cache(maxsize=1)
def canonical_names() -> dict[str, str]:
    """Every name and alias LightGBM accepts, mapped to its canonical name."""
    out: dict[str, str] = {}
    for name, aliases in _ConfigAliases._get_all_param_aliases().items():
        for alias in aliases:
            out[alias] = name
    return out


def lightgbm_param_problems(params: dict[str, Any]) -> list[str]:
    """One message per name in `params` that LightGBM does not know or batchline owns."""
    known = canonical_names()
    problems = []
    for name in params:
        canonical = known.get(name)
        if canonical is None:
            problems.append(f"lightgbm.{name}: LightGBM has no parameter {name!r}; see "
                            "https://lightgbm.readthedocs.io/en/latest/Parameters.html")
        elif canonical in OWN_FIELDS:
            problems.append(f"lightgbm.{name}: set stages.train.params."
                            f"{OWN_FIELDS[canonical]} instead")
        elif canonical in REFUSED:
            problems.append(f"lightgbm.{name}: not allowed here (the stage reads and writes "
                            "its own datasets)")
    return problems
