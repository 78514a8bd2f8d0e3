from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import SPEC, run_cli

from batchline.errors import SpecError
from batchline.spec import load_spec, parse_set


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _spec_data() -> dict:
    return yaml.safe_load(SPEC.read_text())


def test_shipped_spec_is_valid() -> None:
    spec = load_spec(SPEC)
    assert spec.name == "readmission"
    assert spec.params("train").label == "readmitted_30d"  # type: ignore[attr-defined]
    assert spec.image("score") == "localhost/batchline-score:0.1.0"


def test_bad_param_names_the_field_path(tmp_path: Path) -> None:
    data = _spec_data()
    data["stages"]["train"]["params"]["num_leaves"] = 1
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, data))
    assert "stages.train.params.num_leaves" in str(err.value)
    assert str(tmp_path / "spec.yaml") in str(err.value)


def test_misspelt_field_is_rejected(tmp_path: Path) -> None:
    data = _spec_data()
    data["stages"]["score"]["resources"]["memroy"] = "1Gi"
    with pytest.raises(SpecError, match=r"stages\.score\.resources\.memroy"):
        load_spec(_write(tmp_path, data))


def test_bad_memory_quantity_and_unknown_stage(tmp_path: Path) -> None:
    data = _spec_data()
    data["stages"]["train"]["resources"]["memory"] = "lots"
    data["stages"]["deploy"] = {}
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, data))
    assert "stages.train.resources.memory" in str(err.value)


def test_missing_stage(tmp_path: Path) -> None:
    data = _spec_data()
    del data["stages"]["score"]
    with pytest.raises(SpecError, match="missing stages"):
        load_spec(_write(tmp_path, data))


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_set_overrides_are_validated() -> None:
    spec = load_spec(SPEC, parse_set(["stages.train.params.num_leaves=63"]))
    assert spec.params("train").num_leaves == 63  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match="stages.train.params.num_leaves"):
        load_spec(SPEC, parse_set(["stages.train.params.num_leaves=zero"]))
    with pytest.raises(SpecError, match="expected dotted.path=value"):
        parse_set(["oops"])


def test_env_overrides_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHLINE_STORAGE", "s3://bucket/root")
    assert load_spec(SPEC).storage == "s3://bucket/root"


def test_cli_bad_spec_exits_2_and_runs_nothing(tmp_path: Path) -> None:
    data = _spec_data()
    data["stages"]["train"]["params"]["learning_rate"] = -1
    path = _write(tmp_path, data)
    result = run_cli("run", str(path), "--storage", str(tmp_path / "store"))
    assert result.returncode == 2
    assert "stages.train.params.learning_rate" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store").exists()
    assert run_cli("validate", str(path)).returncode == 2
    assert run_cli("validate", str(SPEC)).returncode == 0
