"""The train stage's hyperparameter search: slices, determinism, budget, leaderboard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from conftest import SPEC, run_cli
from test_launcher import InProcessBackend

from batchline import storage
from batchline.errors import DataError, SpecError
from batchline.launcher import Launcher
from batchline.metrics import auc
from batchline.params import TimeSplit, TrainParams
from batchline.spec import load_spec, parse_set
from batchline.stages import linear_baseline, score, split
from batchline.stages.search import Candidate, choose, fleet_leaderboard, standard_error
from batchline.stages.train import load_training_data, model_card, train


def _table(n: int = 3000, seed: int = 1) -> pa.Table:
    """Labels from a non-linear truth over two numbers and a category, dated by `day`."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    cat = rng.choice(["a", "b", "c", "d"], n)
    logit = 1.2 * x1 - 0.8 * x2**2 + np.where(cat == "a", 1.0, 0.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pa.table({"day": np.arange(n) // 10, "x1": x1, "x2": x2, "cat": cat, "y": y,
                     "amount": 3 * x1 + x2 + rng.normal(size=n)})


def _params(**search: object) -> TrainParams:
    # one thread: the machine is shared, and a tiny matrix gains nothing from two
    return TrainParams(label="y", time_column="day", exclude=["amount"], num_boost_round=150,
                       num_threads=1, search={"max_trials": 4, "budget_seconds": 600, **search})


def test_the_selection_slice_is_carved_from_the_fitting_rows_like_the_split() -> None:
    keys = np.arange(1000, dtype=np.float64)
    roles = split.assign_roles(TimeSplit(column="t", fraction=0.2), keys, 0.1, 7,
                               selection_fraction=0.25)
    by_role = {r: keys[roles.roles == r] for r in (split.FIT, split.SELECTION,
                                                   split.EARLY_STOPPING, split.VALID)}
    # time order: fit < selection < early stopping < validation, none empty
    assert by_role[split.FIT].max() < by_role[split.SELECTION].min()
    assert by_role[split.SELECTION].max() < by_role[split.EARLY_STOPPING].min()
    assert by_role[split.EARLY_STOPPING].max() < by_role[split.VALID].min()
    assert roles.report["fractions"] == {"fit": 0.54, "early_stopping": 0.08, "valid": 0.2,
                                         "selection": 0.18}
    plain = split.assign_roles(TimeSplit(column="t", fraction=0.2), keys, 0.1, 7)
    assert "selection" not in plain.report["fractions"] and split.SELECTION not in plain.roles
    # the validation and early-stopping rows are the same with or without a search
    assert np.array_equal(plain.roles == split.VALID, roles.roles == split.VALID)
    assert np.array_equal(plain.roles == split.EARLY_STOPPING,
                          roles.roles == split.EARLY_STOPPING)


def test_search_matrix_keeps_validation_rows_and_orders_selection_after_fit() -> None:
    table = _table()
    plain = load_training_data(ds.dataset(table), TrainParams(label="y", time_column="day",
                                                              exclude=["amount"]))
    data = load_training_data(ds.dataset(table), _params())
    assert plain.n_select == 0 and data.n_select > 0
    assert data.n_fit == plain.n_fit and data.n_stop == plain.n_stop
    assert np.array_equal(data.valid[0], plain.valid[0])  # validation rows untouched
    # the selection rows are the most recent of the fitting rows: find each matrix row's
    # day back in the table by its x1 value (float32 in the matrix, distinct per row)
    days, x1 = table["day"].to_numpy(), table["x1"].to_numpy().astype(np.float32)
    fit_days = days[np.isin(x1, data.x[:data.n_fit - data.n_select, 0])]
    sel_days = days[np.isin(x1, data.x[data.n_fit - data.n_select:data.n_fit, 0])]
    assert len(sel_days) == data.n_select and len(fit_days) == data.n_fit - data.n_select
    assert fit_days.max() <= sel_days.min()


def test_same_seed_and_trials_give_the_same_winner_and_model_bytes() -> None:
    table = _table()
    first = train(load_training_data(ds.dataset(table), _params()), _params())
    second = train(load_training_data(ds.dataset(table), _params()), _params())
    assert first.text == second.text
    def chosen(model: object) -> dict[str, object]:  # all but the time it took
        winner = model.metrics["search"]["winner"]  # type: ignore[attr-defined]
        return {k: v for k, v in winner.items() if k != "seconds"}

    assert chosen(first) == chosen(second)
    # every sampled candidate, not only the winner, is the same (but for its time)
    assert first.leaderboard is not None and second.leaderboard is not None
    assert [{k: v for k, v in c.items() if k != "seconds"} for c in first.leaderboard[
        "candidates"]] == [{k: v for k, v in c.items() if k != "seconds"}
                           for c in second.leaderboard["candidates"]]
    assert first.metrics["search"]["stopped_by"] == "max_trials"
    other = train(load_training_data(ds.dataset(table), _params(seed=99)), _params(seed=99))
    assert other.metrics["search"]["leaderboard_top"] != first.metrics["search"][
        "leaderboard_top"]


def test_leaderboard_lists_every_candidate_and_the_winner_is_the_best_tree() -> None:
    model = train(load_training_data(ds.dataset(_table()), _params(max_trials=5)),
                  _params(max_trials=5))
    board, found = model.leaderboard, model.metrics["search"]
    assert board is not None and found["metric"] == "auc"
    rows = board["candidates"]
    assert len(rows) == 8  # the spec's params, 4 sampled, 3 linear penalties
    assert [r["rank"] for r in rows] == list(range(1, 9))
    assert sorted(r["trial"] for r in rows) == [-3, -2, -1, 0, 1, 2, 3, 4]
    assert sorted(r["params"]["l2"] for r in rows if r["kind"] == "linear") == [1, 10, 100]
    metrics = [r["metric"] for r in rows]
    assert metrics == sorted(metrics, reverse=True)  # auc: higher first
    trees = [r for r in rows if r["kind"] == "lightgbm"]
    # the best on the selection slice, or a simpler one within its standard error
    if found["chosen_by"] == "best":
        assert found["winner"]["trial"] == rows[0]["trial"]
    else:
        assert found["chosen_by"].startswith("one-SE rule") and found["winner"]["trial"] <= 0
        assert found["winner"]["metric"] >= rows[0]["metric"] - rows[0]["se"]
    assert model.kind == found["winner"]["kind"]
    assert all(0 < r["se"] < 0.1 for r in rows)
    assert all(r["seconds"] >= 0 and r["rounds"] >= 1 for r in trees)
    linear = next(r for r in rows if r["kind"] == "linear")
    assert 0.6 < linear["metric"] < 1 and found["linear_baseline_selection"] == linear["metric"]
    # the model reported is the refit winner; its validation AUC is the card's
    assert found["winner_valid"] == pytest.approx(model.metrics["auc_valid"], abs=1e-4)
    assert found["gain_valid"] == pytest.approx(found["winner_valid"]
                                                - found["spec_params_valid"], abs=1e-5)
    assert found["rows"]["selection"] > 0 and found["rows"]["valid"] == model.metrics[
        "rows_valid"]


def test_a_tiny_budget_stops_the_search_and_says_so() -> None:
    params = _params(max_trials=50, budget_seconds=0.001, linear_baseline=False)
    model = train(load_training_data(ds.dataset(_table()), params), params)
    found = model.metrics["search"]
    assert found["stopped_by"] == "budget_seconds" and found["candidates"] == 1
    # the spec's params are always tried first; the budget cut them short
    assert found["winner"]["trial"] == 0 and "cut by budget_seconds" in found["winner"]["note"]
    assert model.leaderboard is not None and len(model.leaderboard["candidates"]) == 1
    # when the spec's params win, the model is the one train fits without a search
    assert found["gain_valid"] == 0 and found["winner_valid"] == found["spec_params_valid"]


def test_regression_search_minimises_its_metric() -> None:
    params = TrainParams(label="amount", time_column="day", objective="regression",
                         exclude=["y"], num_boost_round=150, num_threads=1,
                         search={"max_trials": 3, "metric": "mae", "linear_baseline": True})
    model = train(load_training_data(ds.dataset(_table()), params), params)
    assert model.leaderboard is not None
    metrics = [r["metric"] for r in model.leaderboard["candidates"]]
    assert metrics == sorted(metrics) and model.leaderboard["direction"] == "minimize"
    # the truth is linear here: the ridge baseline is near the noise level (mae ~0.8)
    linear = next(r for r in model.leaderboard["candidates"] if r["kind"] == "linear")
    assert linear["metric"] < 0.9


def test_multiclass_search_ranks_by_accuracy_without_a_linear_model() -> None:
    params = TrainParams(label="cat", time_column="day", objective="multiclass",
                         exclude=["amount"], num_boost_round=50, num_threads=1,
                         search={"max_trials": 3, "metric": "accuracy"})
    model = train(load_training_data(ds.dataset(_table()), params), params)
    assert model.leaderboard is not None and model.kind == "lightgbm"
    rows = model.leaderboard["candidates"]
    assert [r["kind"] for r in rows] == ["lightgbm"] * 3
    assert [r["metric"] for r in rows] == sorted((r["metric"] for r in rows), reverse=True)
    assert model.metrics["classes"] == ["a", "b", "c", "d"]


def test_a_linear_winner_is_saved_as_json_text_and_scored_like_a_booster() -> None:
    # the truth of `amount` is linear plus noise: the ridge model beats a few trees
    params = TrainParams(label="amount", time_column="day", objective="regression",
                         exclude=["y"], num_boost_round=100, num_threads=1,
                         search={"max_trials": 2})
    data = load_training_data(ds.dataset(_table()), params)
    model = train(data, params)
    assert model.kind == "linear" and model.metrics["search"]["winner"]["kind"] == "linear"
    assert model_card(model, params, "r")["model_kind"] == "linear"
    assert "importance_weight_top" in model.metrics and model.metrics["best_iteration"] == 0
    assert model.metrics["importance_weight_top"][0][0] == "x1"  # amount = 3 x1 + x2 + noise
    loaded = linear_baseline.LinearModel.from_json(model.text)
    x_valid, y_valid = data.valid
    assert np.array_equal(loaded.predict(x_valid), linear_baseline.LinearModel.from_json(
        loaded.to_json()).predict(x_valid))
    assert model.metrics["rmse_valid"] == round(float(np.sqrt(np.mean(
        (loaded.predict(x_valid) - y_valid) ** 2))), 5)
    # score's own batch loop takes it where it takes a booster
    batch = _table().to_batches()[0]
    card = {"objective": "regression"}
    schema = score.prediction_schema([pa.field("day", pa.int64())], card)
    out = next(score.score_batches([batch], loaded, data.feature_map, ["day"], schema, "v",
                                   "r", 1, card=card))
    assert out.num_rows == batch.num_rows
    assert np.allclose(out.column("prediction").to_numpy(),
                       loaded.predict(data.feature_map.matrix(batch)))


def _candidate(trial: int, metric: float, se: float, kind: str = "lightgbm") -> Candidate:
    return Candidate(trial, kind, {}, metric, 0.0, None, "", se)


def test_a_lead_within_the_noise_keeps_the_simpler_model() -> None:
    spec, lucky = _candidate(0, 0.75, 0.03), _candidate(7, 0.77, 0.03)
    linear = _candidate(-1, 0.70, 0.03, "linear")
    assert choose([linear, spec, lucky], "auc") == (
        spec, "one-SE rule: within 0.03 of trial 7")
    # a lead larger than its standard error wins
    assert choose([linear, spec, _candidate(7, 0.79, 0.03)], "auc")[0].trial == 7
    # the linear model first when it is within the noise too; minimising metrics alike
    assert choose([_candidate(-1, 0.75, 0.03, "linear"), spec, lucky], "auc")[0].kind == \
        "linear"
    assert choose([_candidate(0, 0.50, 0.02), _candidate(3, 0.49, 0.02)], "logloss")[0].trial \
        == 0
    assert choose([_candidate(0, 0.50, 0.002), _candidate(3, 0.49, 0.002)], "logloss")[0] \
        .trial == 3


def test_auc_standard_error_agrees_with_a_bootstrap() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(600) < 0.2).astype(np.int64)
    score = y * 0.8 + rng.normal(size=600)
    value = auc(y, score)
    boot = [auc(y[i], score[i]) for i in (rng.integers(0, 600, 600) for _ in range(400))]
    assert standard_error("auc", y, score, value) == pytest.approx(np.std(boot), rel=0.25)
    losses = rng.normal(size=600)
    assert standard_error("mae", np.zeros(600), losses, float(np.abs(losses).mean())) == \
        pytest.approx(np.abs(losses).std(ddof=1) / np.sqrt(600))


def test_logistic_baseline_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 3)).astype(np.float32)
    y = (rng.random(2000) < 1 / (1 + np.exp(-(x @ np.array([1.0, -2.0, 0.5]) + 0.3))))
    enc = linear_baseline.fit_encoding(x, [])
    w = linear_baseline.fit_logistic(linear_baseline.encode(enc, x), y.astype(float))
    z = (x - enc.means) / enc.scales
    # scikit-learn's C is the inverse of the L2 weight; neither shrinks the intercept
    ref = LogisticRegression(C=1 / linear_baseline.L2, tol=1e-10, max_iter=1000).fit(z, y)
    assert np.allclose(w[1:], ref.coef_[0], atol=1e-4)
    assert w[0] == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_linear_encoding_one_hots_categories_and_flags_missing_numbers() -> None:
    x = np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 3.0], [0.0, 5.0]], dtype=np.float32)
    enc = linear_baseline.fit_encoding(x, [0])
    z = linear_baseline.encode(enc, x)
    assert z.shape == (4, 1 + 1 + 1 + 3) and enc.width == 6
    assert z[1, 2] == 1.0 and z[0, 2] == 0.0  # missing indicator of column 1
    assert z[1, 1] == 0.0  # the missing value is imputed at the mean, standardised to 0
    assert z[:, 3:].sum(axis=1).tolist() == [1.0, 1.0, 1.0, 1.0]
    unseen = linear_baseline.encode(enc, np.array([[7.0, 1.0]], dtype=np.float32))
    assert unseen[0, 3:].sum() == 0.0


def test_search_spec_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match=r"search\.metric: 'rmse' does not fit objective binary"
                                        r"; use one of auc, logloss"):
        load_spec(SPEC, parse_set(["stages.train.params.search={metric: rmse}"]))
    with pytest.raises(SpecError, match=r"stages\.train\.params\.search\.budget_secs"):
        load_spec(SPEC, parse_set(["stages.train.params.search={budget_secs: 10}"]))
    with pytest.raises(SpecError, match=r"stages\.train\.params\.search\.max_trials"):
        load_spec(SPEC, parse_set(["stages.train.params.search={max_trials: 0}"]))
    spec = load_spec(SPEC, parse_set(["stages.train.params.search={max_trials: 3}"]))
    assert spec.params("train").search_metric == "auc"  # type: ignore[attr-defined]


def test_cli_refuses_a_bad_search_with_exit_2(tmp_path: Path) -> None:
    result = run_cli("validate", str(SPEC), "--set",
                     "stages.train.params.search={metric: accuracy}")
    assert result.returncode == 2
    assert "search.metric" in result.stderr and "Traceback" not in result.stderr


def test_fleet_leaderboard_lists_each_segment_with_its_winner() -> None:
    model = train(load_training_data(ds.dataset(_table()), _params(max_trials=2)),
                  _params(max_trials=2))
    rows = fleet_leaderboard({"H002": model.metrics["search"], "H001": {}})
    assert [r["segment"] for r in rows] == ["H001", "H002"]
    assert rows[0]["search"] is None
    assert rows[1]["winner_trial"] == model.metrics["search"]["winner"]["trial"]
    assert not math.isnan(rows[1]["winner_valid"])


@pytest.mark.slow
def test_pipeline_with_search_commits_the_leaderboard_and_scores(demo_csv: Path,
                                                                 tmp_path: Path) -> None:
    spec = load_spec(SPEC, {"stages.ingest.params.source": str(demo_csv),
                            "stages.train.params.num_threads": 1,
                            "stages.train.params.search": {"max_trials": 3}})
    manifest = Launcher(spec, str(tmp_path), InProcessBackend(), "s1").run()
    uri = str(tmp_path / "runs" / "s1" / "train" / "model")
    record = storage.committed(uri)
    assert record.metrics["search_candidates"] == 3
    assert record.metrics["search_stopped_by"] == "max_trials"
    names = {f.path.rsplit("/", 1)[-1]: f.path for f in record.files}
    board = json.loads(storage.read_bytes(storage.join(uri, names["leaderboard.json"])))
    assert len(board["candidates"]) == 6  # 3 LightGBM, 3 linear
    card = json.loads(storage.read_bytes(storage.join(uri, names["model.json"])))
    winner = card["metrics"]["search"]["winner"]
    listed = next(c for c in board["candidates"] if c["trial"] == winner["trial"])
    assert winner == {k: v for k, v in listed.items() if k != "rank"}
    # a linear winner is scored too (score reads model_kind from the card)
    assert card.get("model_kind", "lightgbm") == winner["kind"]
    assert manifest.stage("train").metrics["search_candidates"] == 3
    predictions = storage.open_dataset(str(tmp_path / "runs" / "s1" / "score" / "predictions"))
    assert predictions.count_rows() > 0
    # a model kind this version cannot score is refused, naming the ones it can
    path = tmp_path / "runs" / "s1" / "train" / "model" / names["model.json"]
    path.write_text(json.dumps({**card, "model_kind": "xgboost"}))
    with pytest.raises(DataError, match=r"model_kind 'xgboost' .* \(lightgbm, linear\)"):
        score.load_model(uri)
