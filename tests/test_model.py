from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SPEC
from test_launcher import InProcessBackend

from batchline import storage
from batchline.errors import DataError
from batchline.launcher import Launcher
from batchline.spec import load_spec
from batchline.stages.score import load_model


@pytest.fixture
def run_root(demo_csv: Path, tmp_path: Path) -> Path:
    spec = load_spec(SPEC, {"stages.ingest.params.source": str(demo_csv)})
    Launcher(spec, str(tmp_path), InProcessBackend(), "m1").run()
    return tmp_path


def _model_files(root: Path) -> dict[str, Path]:
    uri = str(root / "runs" / "m1" / "train" / "model")
    record = storage.committed(uri)
    return {Path(f.path).name: root / "runs" / "m1" / "train" / "model" / f.path
            for f in record.files}


def test_model_is_lightgbm_text_with_card(run_root: Path) -> None:
    files = _model_files(run_root)
    text = files["model.txt"].read_text()
    assert text.startswith("tree\nversion=")
    card = json.loads(files["model.json"].read_text())
    assert card["label"] == "readmitted_30d"
    assert "prior_admissions_365d" in card["feature_map"]["features"]
    assert "hospital_id" in card["feature_map"]["categorical"]
    assert 0.55 < card["metrics"]["auc_valid"] < 0.95
    assert card["metrics"]["calibration_valid"]["ece"] < 0.1
    booster, _ = load_model(str(run_root / "runs" / "m1" / "train" / "model"))
    assert booster.num_feature() == len(card["feature_map"]["features"])


def test_changed_model_file_is_refused(run_root: Path) -> None:
    model = _model_files(run_root)["model.txt"]
    model.write_text(model.read_text().replace("tree\n", "tree \n", 1))
    with pytest.raises(DataError, match="does not match its recorded sha256"):
        load_model(str(run_root / "runs" / "m1" / "train" / "model"))


def test_unseen_category_scores_as_missing(run_root: Path) -> None:
    import pyarrow as pa

    from batchline.stages.matrix import FeatureMap

    fmap = FeatureMap(["hospital_id", "age"], {"hospital_id": ["H001", "H002"]})
    m = fmap.matrix(pa.table({"hospital_id": ["H002", "H999", None], "age": [1, 2, 3]}))
    assert m[0, 0] == 1.0 and m[1, 0] != m[1, 0] and m[2, 0] != m[2, 0]  # NaN for unseen/null
