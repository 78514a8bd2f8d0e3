"""`batchline models ...`: the model registry and a fleet run's leaderboard.

Thin, like cli.py: each command reads or moves through client.py and
registry.py, prints tab-separated lines (or one JSON document with --json),
and turns errors into cli.py's one paragraph and exit code.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="The model registry: champions, versions, promotion, rollback.")

StorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="storage root, a folder or s3://bucket/prefix [default: "
    "$BATCHLINE_STORAGE, else ./batchline-data]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]
PipelineArg = Annotated[str, typer.Argument(metavar="PIPELINE", help="pipeline name (the "
                                            "spec's name)")]
SegmentArg = Annotated[str, typer.Argument(metavar="SEGMENT", help="segment key (e.g. H017; "
                                           "_global for the fallback model)")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why, kept in the alias")]


def _emit(data: Any, lines: list[str], as_json: bool) -> None:
    from batchline.cli import _say

    if as_json:
        _say(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            _say(line)


def _by() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


def _figure(record: dict[str, Any] | None) -> str:
    metrics = (record or {}).get("metrics", {})
    for name in ("auc_valid", "rmse_valid", "multi_logloss_valid"):
        if name in metrics:
            return f"{name} {metrics[name]}"
    return ""


@models_app.command("list")
def list_models(pipeline: Annotated[str | None, typer.Argument(
        metavar="[PIPELINE]", help="only this pipeline [default: all]")] = None,
        storage_opt: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """Every segment's champion and challenger, with the champion's headline metric."""
    from batchline.cli import _client, _guard

    def body() -> None:
        client = _client(storage_opt)
        rows = []
        for name in [pipeline] if pipeline else client.registered_pipelines():
            registry = client.registry(name)
            for segment in registry.segments():
                champion = registry.alias(segment, "champion")
                challenger = registry.alias(segment, "challenger")
                record = registry.version(segment, champion.version) if champion else None
                rows.append({"pipeline": name, "segment": segment,
                             "champion": champion.version if champion else None,
                             "challenger": challenger.version if challenger else None,
                             "metric": _figure(record),
                             "versions": len(registry.versions(segment))})
        _emit(rows, [f"{r['pipeline']}\t{r['segment']}\tchampion {r['champion'] or '-'}\t"
                     f"challenger {r['challenger'] or '-'}\t{r['metric']}\t"
                     f"{r['versions']} versions" for r in rows], as_json)
    _guard(body)


@models_app.command()
def show(pipeline: PipelineArg, segment: SegmentArg, storage_opt: StorageOpt = None,
         as_json: JsonOpt = False) -> None:
    """A segment's versions (metrics, lineage), its aliases and the gate's decisions."""
    from batchline.cli import _client, _guard

    def body() -> None:
        registry = _client(storage_opt).registry(pipeline)
        versions = registry.versions(segment)
        if not versions:
            from batchline.errors import SpecError

            raise SpecError(f"no model {pipeline}/{segment} in the registry; `batchline models "
                            "list` shows what is there")
        aliases = {name: registry.alias(segment, name) for name in ("champion", "challenger")}
        decisions = registry.decisions(segment)
        data: dict[str, Any] = {"pipeline": pipeline, "segment": segment, "versions": versions,
                "aliases": {k: (vars(a) if a else None) for k, a in aliases.items()},
                "decisions": decisions}
        lines = [f"{name}: {a.version} (by {a.run_id or a.by}: {a.reason})" if a else
                 f"{name}: -" for name, a in aliases.items()]
        lines += [f"version {v['version']}\t{_figure(v)}\trun "
                  f"{v.get('lineage', {}).get('run_id', '-')}\tregistered "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(v['registered_at']))}"
                  for v in versions]
        lines += [f"decision of run {d['run_id']}: "
                  f"{'promoted' if d.get('promoted') else 'not promoted'} ({d.get('reason')})"
                  for d in decisions]
        _emit(data, lines, as_json)
    _guard(body)


def _moved(moved: Any, as_json: bool, what: str, registry: Any) -> None:
    from batchline import registry_serving
    from batchline.cli import _say

    if moved.won:  # scoring-only runs read the champions from the snapshot
        registry_serving.publish(registry)
    alias = moved.alias
    _emit({"moved": moved.won, "reason": moved.reason,
           "alias": vars(alias) if alias else None},
          [f"{what}: champion is now {alias.version}" if moved.won and alias else
           f"{what} refused: {moved.reason}"], as_json)
    if not moved.won:
        _say(f"error: {moved.reason}", err=True)
        raise typer.Exit(2)


@models_app.command()
def promote(pipeline: PipelineArg, segment: SegmentArg,
            version: Annotated[str, typer.Argument(metavar="VERSION")],
            reason: ReasonOpt = "promoted by hand", storage_opt: StorageOpt = None,
            as_json: JsonOpt = False) -> None:
    """Make VERSION the segment's champion (a person's decision: no gate)."""
    from batchline.cli import _client, _guard

    def body() -> None:
        registry = _client(storage_opt).registry(pipeline)
        _moved(registry.promote(segment, version, by=_by(), reason=reason), as_json, "promote",
               registry)
    _guard(body)


@models_app.command()
def rollback(pipeline: PipelineArg, segment: SegmentArg,
             reason: ReasonOpt = "rolled back by hand", storage_opt: StorageOpt = None,
             as_json: JsonOpt = False) -> None:
    """Make the previous champion the champion again."""
    from batchline.cli import _client, _guard

    def body() -> None:
        registry = _client(storage_opt).registry(pipeline)
        _moved(registry.rollback(segment, by=_by(), reason=reason), as_json, "rollback",
               registry)
    _guard(body)


@models_app.command()
def publish(pipeline: PipelineArg, storage_opt: StorageOpt = None) -> None:
    """Commit the champions' snapshot that scoring-only runs read
    (stages.score.inputs.model: <storage>/registry/PIPELINE/_serving)."""
    from batchline import registry_serving
    from batchline.cli import _client, _guard, _say

    def body() -> None:
        registry = _client(storage_opt).registry(pipeline)
        uri = registry_serving.publish(registry)
        if uri is None:
            from batchline.errors import SpecError

            raise SpecError(f"pipeline {pipeline!r} has no global champion in the registry yet; "
                            "train its fleet first")
        _say(f"champions of {pipeline} committed at {uri}")
    _guard(body)


@models_app.command()
def leaderboard(run_id: Annotated[str, typer.Argument(metavar="RUN")],
                storage_opt: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """A fleet run's leaderboard: every segment, its status, metrics or cause."""
    from batchline.cli import _client, _guard

    def body() -> None:
        rows = _client(storage_opt).leaderboard(run_id)
        _emit(rows, [f"{r['segment']}\t{r['status']}\t{r.get('rows', '-')} rows\t"
                     f"{_figure({'metrics': r})}\t{r.get('decision', {}).get('reason', '')}"
                     f"{r.get('cause', '')}" for r in rows], as_json)
    _guard(body)
