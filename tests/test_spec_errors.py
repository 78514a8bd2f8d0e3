"""`validate` lists every problem of a spec at once, in plain words, with "did you mean"."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import SPEC, run_cli

from batchline.errors import SpecError
from batchline.spec import PipelineSpec, load_spec


def _problems(tmp_path: Path, change: object) -> list[str]:
    data = yaml.safe_load(SPEC.read_text())
    change(data)  # type: ignore[operator]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    heading, *lines = str(err.value).splitlines()
    assert heading == f"{path}: {len(lines)} problem{'s' if len(lines) > 1 else ''} in the " \
                      "pipeline spec"
    return [line.strip() for line in lines]


def test_a_misspelt_stage_does_not_hide_a_bad_shards(tmp_path: Path) -> None:
    def change(data: dict) -> None:
        data["stages"]["scor"] = data["stages"].pop("score")
        data["stages"]["train"]["shards"] = 4

    assert sorted(_problems(tmp_path, change)) == [
        "stages.scor: unknown stage 'scor'; did you mean 'score'? (stages: ingest, monitor, "
        "features, train, score)",
        "stages.train.shards: stage 'train' cannot be sharded (shardable: score); remove "
        "shards or set it to 1"]


def test_a_misspelt_field_does_not_hide_a_bad_param(tmp_path: Path) -> None:
    def change(data: dict) -> None:
        ingest = data["stages"]["ingest"]
        ingest["resouces"] = ingest.pop("resources")
        ingest["params"]["fromat"] = "csv"
        ingest["params"]["format"] = "xls"

    assert _problems(tmp_path, change) == [
        "stages.ingest.resouces: unknown field 'resouces'; did you mean 'resources'?",
        "stages.ingest.params.format: 'xls' is not allowed (choose one of: csv, jsonl, parquet)",
        "stages.ingest.params.fromat: unknown field 'fromat'; did you mean 'format'?"]


def test_a_wrong_column_type_is_one_problem_not_two(tmp_path: Path) -> None:
    def change(data: dict) -> None:
        data["stages"]["ingest"]["params"]["columns"]["admit_date"] = "datetime"

    assert _problems(tmp_path, change) == [
        "stages.ingest.params.columns.admit_date: 'datetime' is not allowed; did you mean "
        "'date'? (choose one of: int64, float64, string, bool, date, timestamp)"]


def test_plain_words_for_numbers_names_and_missing_fields(tmp_path: Path) -> None:
    def change(data: dict) -> None:
        data["nam"] = data.pop("name")
        data["stages"]["train"]["retries"] = -1
        data["stages"]["train"]["params"]["num_leaves"] = "many"
        data["backends"] = {"kubernetes": {"namespce": "x"}}

    problems = _problems(tmp_path, change)
    assert problems == [
        "name: missing; add `name:` here",
        "stages.train.retries: must be 0 or more, not -1",
        "nam: unknown field 'nam'; did you mean 'name'?",
        "stages.train.params.num_leaves: must be a whole number, not 'many'",
        "backends.kubernetes.namespce: unknown field 'namespce'; did you mean 'namespace'?"]


def test_a_field_with_no_close_match_lists_the_fields(tmp_path: Path) -> None:
    def change(data: dict) -> None:
        data["name"] = "Readmission_Model"
        data["stages"]["score"]["colour"] = "blue"

    problems = _problems(tmp_path, change)
    assert problems[0].startswith("name: 'Readmission_Model': use 1-40 lowercase letters")
    assert problems[1] == ("stages.score.colour: unknown field 'colour'; the fields here are: "
                           "params, resources, retries, shards, node_selector, tolerations, "
                           "inputs")


def test_models_built_directly_still_check_stage_names() -> None:
    data = yaml.safe_load(SPEC.read_text())
    data["stages"]["deploy"] = {}
    with pytest.raises(ValueError, match="unknown stage 'deploy'"):
        PipelineSpec.model_validate(data)


def test_validate_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    data = yaml.safe_load(SPEC.read_text())
    data["stages"]["trian"] = data["stages"].pop("train")
    data["stages"]["score"]["shards"] = 0
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_cli("validate", str(path))
    assert result.returncode == 2, result.stderr
    assert "2 problems in the pipeline spec" in result.stderr
    assert "stages.score.shards: must be 1 or more, not 0" in result.stderr
    assert "did you mean 'train'?" in result.stderr
    assert "Traceback" not in result.stderr
