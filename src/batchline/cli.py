"""The command line: `batchline run | resume | runs | status | logs | explain | ...`.

The CLI is an edge: it parses options, builds a backend and a Launcher, shows
progress, and turns BatchlineError into a one-paragraph message and an exit
code (2 for bad input), never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from batchline import layout, storage
from batchline.backends import BACKENDS, REMOTE, get_backend
from batchline.errors import BatchlineError, SpecError, StageFailed
from batchline.launcher import Launcher, resume_hint
from batchline.manifest import RunManifest, StageState, list_runs
from batchline.spec import PipelineSpec, load_spec, parse_set, parse_spec
from batchline.stages import STAGES

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Model-building jobs as four containerized batch stages.")
console = Console(stderr=True)
out = Console()
DEFAULT_STORAGE = "./batchline-data"
T = TypeVar("T")

StorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="storage root (local folder or s3://bucket/prefix); "
    "default: the spec's, or $BATCHLINE_STORAGE")]
BackendOpt = Annotated[str, typer.Option("--backend", help=", ".join(BACKENDS))]
OptionOpt = Annotated[list[str] | None, typer.Option(
    "--option", "-o", help="a backend option, KEY=VALUE (see docs/extending.md); overrides "
    "the spec's backends.<name> section")]


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body; print BatchlineErrors without a traceback and exit."""
    try:
        return fn()
    except StageFailed as exc:
        # Messages and logs are data: escaped, so a "[...]" in them prints as is.
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        if exc.log_tail:
            console.print("[dim]last log lines:[/dim]")
            console.print(exc.log_tail, markup=False, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except BatchlineError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


def _root(storage_opt: str | None, spec: PipelineSpec | None = None) -> str:
    root = storage_opt or os.environ.get("BATCHLINE_STORAGE") or (
        spec.storage if spec else DEFAULT_STORAGE)
    storage.resolve(root)  # refuses s3:// without a bucket, unknown schemes
    if "://" not in root:
        root = os.path.abspath(root)
        if os.path.exists(root) and not os.path.isdir(root):
            raise SpecError(f"--storage {root} is a file; give a folder or s3://bucket/prefix")
    return root.rstrip("/")


def _backend_options(name: str, spec: PipelineSpec, given: dict[str, Any],
                     pairs: list[str] | None) -> dict[str, Any]:
    """The spec's `backends.<name>` section, then the command line's options on top."""
    options = {**spec.backend_options(name), **{k: v for k, v in given.items() if v}}
    for key, value in parse_set(pairs or []).items():
        options[key] = value
    return options


def _require_remote(spec: PipelineSpec, root: str, backend: str) -> None:
    """Stages that run on other machines cannot see this machine's folders."""
    if backend not in REMOTE:
        return
    uris = [("--storage", root)]
    for stage in spec.stages:
        params = spec.stages[stage].params
        uris += [(f"stages.{stage}.params.{p}", str(params.get(p, "")))
                 for p in STAGES[stage].source_params]
    for name, uri in uris:
        if not uri.startswith("s3://"):
            raise SpecError(f"--backend {backend}: {name} is {uri!r}; its pods cannot see "
                            "this machine's folders, use an s3:// URI")


def _stage_table(manifest: RunManifest) -> Table:
    table = Table(title=f"run {manifest.run_id} ({manifest.state})", title_justify="left")
    for col in ("stage", "state", "rows", "elapsed", "detail"):
        table.add_column(col, justify="right" if col in ("rows", "elapsed") else "left")
    now = time.time()
    for stage, entry in manifest.stages.items():
        started, ended = entry.started_at, entry.ended_at
        elapsed = f"{(ended or now) - started:.1f}s" if started else ""
        rows = f"{entry.rows:,}" if entry.rows is not None else ""
        color = {"succeeded": "green", "reused": "cyan", "failed": "red",
                 "running": "yellow"}.get(entry.state, "white")
        table.add_row(stage, f"[{color}]{entry.state}[/{color}]", rows, elapsed,
                      escape(_detail(entry)))
    return table


def _detail(entry: Any) -> str:
    if entry.state is not StageState.RUNNING:
        return str(entry.reason)
    attempt = entry.attempts[-1].number if entry.attempts else 1
    return f"attempt {attempt} {entry.phase}".rstrip()


def _summary(manifest: RunManifest, seconds: float) -> None:
    stages = manifest.stages
    launched = sum(1 for s in stages.values() if s.state is StageState.SUCCEEDED)
    reused = sum(1 for s in stages.values() if s.state is StageState.REUSED)
    out.print(_stage_table(manifest))
    for stage, entry in stages.items():
        if entry.metrics:
            shown = ", ".join(f"{k} {_number(v)}" for k, v in entry.metrics.items())
            out.print(f"{stage}: {shown}", markup=False, highlight=False, soft_wrap=True)
        for warning in entry.warnings:
            out.print(f"[yellow]warning:[/yellow] {stage}: {escape(warning)}", highlight=False,
                      soft_wrap=True)
    out.print(f"{launched} stages launched, {reused} reused, {seconds:.1f}s; "
              f"manifest {layout.manifest_uri(manifest.root, manifest.run_id)}",
              soft_wrap=True, highlight=False)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _line_printer() -> Callable[[RunManifest], None]:
    """Without a terminal (CI, a launcher pod's log), one line per stage state change."""
    seen: dict[str, tuple[str, str]] = {}

    def on_change(manifest: RunManifest) -> None:
        for stage, entry in manifest.stages.items():
            state = (str(entry.state), entry.phase)
            if seen.get(stage) != state and entry.state is not StageState.PENDING:
                seen[stage] = state
                console.print(f"{time.strftime('%H:%M:%S')} {manifest.run_id} {stage}: "
                              f"{entry.state} {_detail(entry)}", markup=False, highlight=False,
                              soft_wrap=True)
    return on_change


def _launch(spec: PipelineSpec, root: str, backend_name: str, run_id: str,
            stages: list[str] | None, options: dict[str, Any], verify: bool = False,
            force: list[str] | None = None) -> None:
    _require_remote(spec, root, backend_name)
    backend = get_backend(backend_name, options, where=f"--option (backend {backend_name})")
    started = time.monotonic()
    live = Live(console=console, refresh_per_second=4, transient=True) \
        if console.is_terminal else None
    launcher = Launcher(spec, root, backend, run_id, stages,
                        on_change=(lambda m: live.update(_stage_table(m))) if live
                        else _line_printer(), verify=verify, force=force)
    try:
        if live:
            with live:
                launcher.run()
        else:
            launcher.run()
    except StageFailed:
        _summary(launcher.manifest, time.monotonic() - started)
        console.print(resume_hint(run_id, root), markup=False, highlight=False)
        raise
    _summary(launcher.manifest, time.monotonic() - started)


NamespaceOpt = Annotated[str | None, typer.Option(help="Kubernetes namespace (backend option "
                                                  "namespace)")]
ContextOpt = Annotated[str | None, typer.Option(help="kubeconfig context (backend option "
                                                "context)")]
InClusterOpt = Annotated[bool, typer.Option(help="use the pod's service account (backend "
                                            "option in_cluster)")]
SecretOpt = Annotated[str | None, typer.Option(help="Kubernetes Secret with storage "
                                               "credentials for stage pods (backend option "
                                               "secret)")]
VerifyOpt = Annotated[bool, typer.Option("--verify", help="check the sha256 of every file "
                                         "before reusing a cached stage")]
ForceOpt = Annotated[str | None, typer.Option("--force", help="comma-separated stages to "
                                              "rerun even if their outputs could be reused")]


def _shorthands(namespace: str | None, context: str | None, in_cluster: bool,
                secret: str | None) -> dict[str, Any]:
    """The backend-option flags kept for convenience; a backend without them says so."""
    return {"namespace": namespace, "context": context, "in_cluster": in_cluster,
            "secret": secret}


def _names(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value is not None else None


@app.command()
def run(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="pipeline spec YAML")],
    storage_opt: StorageOpt = None,
    stages: Annotated[str | None, typer.Option("--stages", help="comma-separated subset")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id")] = None,
    backend: BackendOpt = "local",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a spec field: "
                                                   "stages.train.params.num_leaves=63")] = None,
    option: OptionOpt = None,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    in_cluster: InClusterOpt = False,
    secret: SecretOpt = None,
    verify: VerifyOpt = False,
    force: ForceOpt = None,
) -> None:
    """Run a pipeline: every stage, or --stages; unchanged stages are reused."""
    def body() -> None:
        spec = load_spec(spec_path, parse_set(set_ or []))
        spec = _absolute_sources(spec)
        root = _root(storage_opt, spec)
        rid = layout.check_run_id(run_id) if run_id is not None else layout.new_run_id(spec.name)
        given = _shorthands(namespace, context, in_cluster, secret)
        _launch(spec, root, backend, rid, _names(stages),
                _backend_options(backend, spec, given, option), verify, _names(force))
    _guard(body)


def _absolute_sources(spec: PipelineSpec) -> PipelineSpec:
    """Make relative local sources absolute, so stage processes anywhere find them."""
    overrides = {}
    for stage, stage_spec in spec.stages.items():
        for name in STAGES[stage].source_params:
            source = str(stage_spec.params.get(name, ""))
            if source and "://" not in source and not os.path.isabs(source):
                overrides[f"stages.{stage}.params.{name}"] = os.path.abspath(source)
    return parse_spec(spec.model_dump(mode="json"), "<spec>", overrides) if overrides else spec


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    storage_opt: StorageOpt = None,
    backend: Annotated[str | None, typer.Option("--backend")] = None,
    option: OptionOpt = None,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    in_cluster: InClusterOpt = False,
    secret: SecretOpt = None,
    verify: VerifyOpt = False,
) -> None:
    """Rerun a run from the first stage that did not commit (same spec, same run id)."""
    def body() -> None:
        root = _root(storage_opt)
        manifest = RunManifest.load(root, layout.check_run_id(run_id))
        spec = parse_spec(manifest.spec, f"manifest of run {run_id}")
        name = backend or manifest.backend
        given = _shorthands(namespace, context, in_cluster, secret)
        _launch(spec, root, name, run_id, manifest.selected_stages,
                _backend_options(name, spec, given, option), verify)
    _guard(body)


@app.command()
def runs(storage_opt: StorageOpt = None) -> None:
    """List the runs under a storage root, oldest first."""
    def body() -> None:
        table = Table("run", "pipeline", "state", "backend", "created", "stages")
        table.columns[0].no_wrap = True
        manifests, unreadable = list_runs(_root(storage_opt))
        for m in manifests:
            states = " ".join(f"{s}:{e.state}" for s, e in m.stages.items())
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at))
            table.add_row(m.run_id, m.pipeline, str(m.state), m.backend, created, states)
        for run_id in unreadable:
            table.add_row(run_id, "", "[red]unreadable[/red]", "", "",
                          "manifest missing or damaged: `batchline status` says more")
        out.print(table)
    _guard(body)


@app.command()
def status(run_id: Annotated[str, typer.Argument(metavar="RUN")],
           storage_opt: StorageOpt = None) -> None:
    """Show one run's stages: state, rows, time, and why."""
    def body() -> None:
        manifest = RunManifest.load(_root(storage_opt), layout.check_run_id(run_id))
        out.print(_stage_table(manifest))
        for stage, entry in manifest.stages.items():
            if entry.state is StageState.FAILED:
                out.print(f"[red]{stage}[/red]: {escape(entry.reason)}\n"
                          f"{escape(entry.error)}", highlight=False)
    _guard(body)


@app.command()
def logs(run_id: Annotated[str, typer.Argument(metavar="RUN")],
         stage: Annotated[str, typer.Argument(metavar="STAGE")],
         attempt: Annotated[int | None, typer.Option(help="default: the last")] = None,
         storage_opt: StorageOpt = None) -> None:
    """Print a stage's log, kept in storage after pods and containers are gone."""
    def body() -> None:
        root = _root(storage_opt)
        manifest = RunManifest.load(root, layout.check_run_id(run_id))
        if stage not in manifest.stages:
            raise SpecError(f"run {run_id} has no stage {stage!r}; its stages: "
                            f"{', '.join(manifest.stages)}")
        attempts = manifest.stages[stage].attempts
        chosen = [a for a in attempts if a.number == attempt] if attempt is not None else \
            [a for a in attempts if attempts and a.number == attempts[-1].number]
        uris = [uri for a in chosen for uri in a.logs]
        if not uris:
            raise SpecError(f"no logs for stage {stage} of run {run_id} "
                            f"(state: {manifest.stages[stage].state}"
                            + (f", attempt {attempt}" if attempt is not None else "") + ")")
        for uri in uris:
            sys.stdout.write(storage.read_text(uri))
    _guard(body)


@app.command()
def explain(run_id: Annotated[str, typer.Argument(metavar="RUN")],
            storage_opt: StorageOpt = None) -> None:
    """Say for each stage why it ran or was reused."""
    def body() -> None:
        manifest = RunManifest.load(_root(storage_opt), layout.check_run_id(run_id))
        for stage, entry in manifest.stages.items():
            out.print(f"{stage:9} {entry.state:10} {entry.reason}",
                      highlight=False, markup=False, soft_wrap=True)
    _guard(body)


@app.command()
def validate(spec_path: Annotated[str, typer.Argument(metavar="SPEC")],
             set_: Annotated[list[str] | None, typer.Option("--set")] = None) -> None:
    """Check a pipeline spec; exit 2 with the field path of every error."""
    def body() -> None:
        spec = load_spec(spec_path, parse_set(set_ or []))
        out.print(f"{spec_path}: valid pipeline {spec.name!r} "
                  f"({' -> '.join(spec.pipeline.order)})")
    _guard(body)


@app.command("demo-data")
def demo_data(rows: Annotated[int, typer.Option(min=100)] = 100_000,
              out_dir: Annotated[str, typer.Option("--out")] = "demo-data",
              seed: int = 42) -> None:
    """Write synthetic readmission encounters (CSV) with a known best AUC."""
    from batchline.demo_data import generate

    started = time.monotonic()
    summary = generate(rows, out_dir, seed=seed)
    out.print(f"wrote {summary.rows:,} encounters ({summary.labelled:,} labelled, "
              f"{summary.population:,} to score) to {summary.path} in "
              f"{time.monotonic() - started:.1f}s; best achievable AUC {summary.best_auc:.4f} "
              f"(recent fifth: {summary.best_auc_recent:.4f}), prevalence {summary.prevalence:.3f}")


@app.command()
def render(spec_path: Annotated[str, typer.Argument(metavar="SPEC")],
           backend: BackendOpt = "kubernetes",
           run_id: Annotated[str | None, typer.Option("--run-id")] = None,
           storage_opt: StorageOpt = None,
           set_: Annotated[list[str] | None, typer.Option("--set")] = None,
           option: OptionOpt = None,
           secret: SecretOpt = None) -> None:
    """Print one run's Kubernetes Jobs as YAML (for kubectl), or with --backend sagemaker
    its Create*Job requests and IAM policies as JSON (for the aws CLI)."""
    def body() -> None:
        import yaml

        from batchline.backends import validate_options
        from batchline.render import render_run, render_sagemaker

        if backend not in ("kubernetes", "sagemaker"):
            raise SpecError("render supports --backend kubernetes and --backend sagemaker")
        spec = load_spec(spec_path, parse_set(set_ or []))
        rid = layout.check_run_id(run_id) if run_id is not None else layout.new_run_id(spec.name)
        root = _root(storage_opt, spec)
        _require_remote(spec, root, backend)
        given = _backend_options(backend, spec, {"secret": secret}, option)
        options = validate_options(backend, given, "--option")
        if backend == "kubernetes":
            sys.stdout.write(yaml.safe_dump_all(render_run(spec, rid, root, options),
                                                sort_keys=False))
            return
        from batchline.backends.sagemaker_job import SageMakerOptions

        # Only what the spec and --option say: nothing from this shell's
        # environment ends up in requests meant for another account.
        try:
            rendered = render_sagemaker(spec, rid, root, SageMakerOptions(**given))
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        sys.stdout.write(json.dumps(rendered, indent=2) + "\n")
    _guard(body)


@app.command()
def infer(source: Annotated[str, typer.Argument(metavar="SOURCE", help="file, folder or glob")],
          rows: Annotated[int, typer.Option(min=1, help="rows to sample")] = 10_000,
          format_: Annotated[str | None, typer.Option("--format", help="csv, jsonl or parquet; "
                                                      "default: from the extension")] = None,
          delimiter: Annotated[str, typer.Option(help="CSV field separator")] = ",",
          encoding: Annotated[str | None, typer.Option(help="text encoding; default UTF-8")]
          = None) -> None:
    """Print a ready stages.ingest.params block (columns, types, roles) inferred from a sample."""
    def body() -> None:
        from pydantic import ValidationError

        from batchline.infer import infer as infer_schema
        from batchline.infer import to_yaml

        try:
            result = infer_schema(source, rows, format_, delimiter, encoding)
        except ValidationError as exc:
            raise SpecError(f"infer: {exc.errors()[0]['msg']}") from None
        sys.stdout.write(to_yaml(result))
    _guard(body)


def main() -> None:
    logging.basicConfig(level=os.environ.get("BATCHLINE_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
