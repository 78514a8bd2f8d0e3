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


def test_order_comes_from_the_datasets(tmp_path: Path) -> None:
    data = _spec_data()
    data["stages"] = dict(reversed(list(data["stages"].items())))  # listed backwards
    assert load_spec(_write(tmp_path, data)).pipeline.order == (
        "ingest", "features", "train", "score")


def test_a_spec_may_leave_out_stages_it_does_not_need(tmp_path: Path) -> None:
    data = _spec_data()
    del data["stages"]["score"]
    assert load_spec(_write(tmp_path, data)).pipeline.order == ("ingest", "features", "train")
    # Scoring only: the model comes from a committed dataset of an earlier run.
    data = _spec_data()
    del data["stages"]["train"]
    data["stages"]["score"]["inputs"] = {"model": "s3://bucket/root/runs/r1/train/model"}
    spec = load_spec(_write(tmp_path, data))
    assert spec.pipeline.order == ("ingest", "features", "score")
    assert spec.pipeline.wiring["score"]["model"] == (
        "uri", "s3://bucket/root/runs/r1/train/model", "model")


def test_a_missing_dataset_names_the_stage_and_the_fix(tmp_path: Path) -> None:
    data = _spec_data()
    del data["stages"]["train"]
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, data))
    message = str(err.value)
    assert "stages.score: reads dataset 'model', which no stage of this spec writes" in message
    assert "add stages.train" in message and "stages.score.inputs.model" in message
    data = _spec_data()
    data["stages"]["score"]["inputs"] = {"modle": "s3://b/m"}
    with pytest.raises(SpecError, match=r"stages\.score\.inputs\.modle: stage 'score' has no "
                                        "input 'modle'"):
        load_spec(_write(tmp_path, data))


def test_only_shardable_stages_take_shards(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"stages\.features\.shards: stage 'features' cannot be "
                                        "sharded"):
        load_spec(SPEC, parse_set(["stages.features.shards=2"]))
    assert load_spec(SPEC, parse_set(["stages.score.shards=3"])).stages["score"].shards == 3


@pytest.mark.parametrize(("field", "value"), [
    ("memory", "512m"), ("memory", "2GB"), ("memory", "1"), ("cpu", "2Gi"), ("cpu", "0"),
    ("cpu", "fast")])
def test_one_quantity_parser_refuses_what_backends_cannot_honour(field: str,
                                                                value: str) -> None:
    with pytest.raises(SpecError, match=rf"stages\.train\.resources\.{field}"):
        load_spec(SPEC, {f"stages.train.resources.{field}": value})


def test_cpu_and_memory_may_be_numbers_as_in_kubernetes() -> None:
    # `--set ...cpu=2` and `cpu: 2` in YAML are numbers; Kubernetes takes them too.
    spec = load_spec(SPEC, parse_set(["stages.score.resources.cpu=2",
                                      "stages.train.resources.cpu=0.5",
                                      "stages.train.resources.memory=4294967296"]))
    assert spec.stages["score"].resources.cpu == "2"
    assert spec.stages["train"].resources.cpu == "0.5"
    assert spec.stages["train"].resources.memory == "4294967296"
    with pytest.raises(SpecError, match=r"stages\.score\.resources\.cpu: must be text"):
        load_spec(SPEC, parse_set(["stages.score.resources.cpu=true"]))
    with pytest.raises(SpecError, match=r"stages\.score\.resources\.cpu"):
        load_spec(SPEC, parse_set(["stages.score.resources.cpu=0"]))


def test_backend_options_are_validated_by_the_backend(tmp_path: Path) -> None:
    data = _spec_data()
    data["kubernetes"]["namespaec"] = "x"
    with pytest.raises(SpecError, match=r"backends\.kubernetes\.namespaec"):
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
    with pytest.raises(SpecError, match="is not valid YAML"):
        parse_set(["stages.train.params.label=[unclosed"])


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


def test_a_non_ascii_delimiter_or_quote_is_a_spec_error(tmp_path: Path) -> None:
    """Arrow's CSV reader takes ASCII separators only: say so before any run starts."""
    for field, value in (("delimiter", "€"), ("quote_char", "«")):
        data = _spec_data()
        data["stages"]["ingest"]["params"][field] = value
        with pytest.raises(SpecError) as err:
            load_spec(_write(tmp_path, data))
        assert f"stages.ingest.params.{field}" in str(err.value) and "ASCII" in str(err.value)
