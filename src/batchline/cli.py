"""The command line: `batchline run | resume | runs | status | logs | explain | ...`.

The CLI is an edge: it parses options, builds a backend and a Launcher, shows
progress, and turns BatchlineError into a one-paragraph message and an exit
code (2 for bad input), never a traceback.
"""

from __future__ import annotations

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

from batchline import STAGES, layout, storage
from batchline.backends import get_backend
from batchline.errors import EXIT_BAD_INPUT, BatchlineError, SpecError, StageFailed
from batchline.launcher import Launcher, resume_hint
from batchline.manifest import RunManifest, list_runs
from batchline.spec import PipelineSpec, load_spec, parse_set, parse_spec
from batchline.task import Cause

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Model-building jobs as four containerized batch stages.")
console = Console(stderr=True)
out = Console()
DEFAULT_STORAGE = "./batchline-data"
T = TypeVar("T")

StorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="storage root (local folder or s3://bucket/prefix); "
    "default: the spec's, or $BATCHLINE_STORAGE")]
BackendOpt = Annotated[str, typer.Option("--backend", help="local, container or kubernetes")]


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
        raise typer.Exit(EXIT_BAD_INPUT if exc.cause is Cause.BAD_INPUT else 1) from None
    except BatchlineError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


def _root(storage_opt: str | None, spec: PipelineSpec | None = None) -> str:
    root = storage_opt or os.environ.get("BATCHLINE_STORAGE") or (
        spec.storage if spec else DEFAULT_STORAGE)
    if "://" not in root:
        root = os.path.abspath(root)
    return root.rstrip("/")


# Plain settings a stage pod needs to find storage; credentials are never
# copied (in a cluster they come from IRSA or the Secret named by --secret).
POD_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def _backend(name: str, spec: PipelineSpec, namespace: str | None, context: str | None,
             in_cluster: bool, secret: str | None = None) -> Any:
    options: dict[str, object] = {}
    if name == "kubernetes":
        k8s = spec.kubernetes
        options = {"namespace": namespace or k8s.namespace, "context": context,
                   "in_cluster": in_cluster, "service_account": k8s.service_account,
                   "ttl_seconds": k8s.ttl_seconds_after_finished,
                   # The launcher retries by cause with a new Job per attempt,
                   # so the Job controller itself does not retry.
                   "backoff_limit": 0, "env_from_secret": secret,
                   "env": {k: os.environ[k] for k in POD_ENV if k in os.environ}}
    return get_backend(name, options)


def _require_remote(spec: PipelineSpec, root: str, what: str) -> None:
    """Pods run elsewhere: refuse storage or a source they could not see."""
    source = str(spec.stages["ingest"].params.get("source", ""))
    for name, uri in (("--storage", root), ("stages.ingest.params.source", source)):
        if not uri.startswith("s3://"):
            raise SpecError(f"{what}: {name} is {uri!r}; pods cannot see this machine's "
                            "folders, use an s3:// URI")


def _stage_table(manifest: RunManifest) -> Table:
    table = Table(title=f"run {manifest.run_id} ({manifest.data['state']})", title_justify="left")
    for col in ("stage", "state", "rows", "elapsed", "detail"):
        table.add_column(col, justify="right" if col in ("rows", "elapsed") else "left")
    now = time.time()
    for stage in STAGES:
        entry = manifest.data["stages"].get(stage)
        if entry is None:
            continue
        started, ended = entry.get("started_at"), entry.get("ended_at")
        elapsed = f"{(ended or now) - started:.1f}s" if started else ""
        rows = f"{entry['rows']:,}" if entry.get("rows") is not None else ""
        detail = entry.get("reason", "") if entry["state"] != "running" else \
            f"attempt {entry.get('attempt', 1)} {entry.get('phase', '')}"
        color = {"succeeded": "green", "reused": "cyan", "failed": "red",
                 "running": "yellow"}.get(entry["state"], "white")
        table.add_row(stage, f"[{color}]{entry['state']}[/{color}]", rows, elapsed, detail)
    return table


def _summary(manifest: RunManifest, seconds: float) -> None:
    stages = manifest.data["stages"]
    launched = sum(1 for s in stages.values() if s["state"] == "succeeded")
    reused = sum(1 for s in stages.values() if s["state"] == "reused")
    out.print(_stage_table(manifest))
    train = stages.get("train", {}).get("metrics", {})
    ingest = stages.get("ingest", {}).get("metrics", {})
    if "auc_valid" in train:
        line = f"validation AUC {train['auc_valid']:.4f}"
        if "generator_best_auc" in ingest:
            best = ingest["generator_best_auc"]
            gap = best - train["auc_valid"]
            line += f" (generator's best achievable {best:.4f}, gap {gap:.4f})"
        if "calibration_ece" in train:
            line += f", calibration error {train['calibration_ece']:.4f}"
        out.print(line)
    if ingest.get("rows_bad"):
        out.print(f"quarantined rows: {ingest['rows_bad']:,} (dataset ingest/quarantine)")
    out.print(f"{launched} stages launched, {reused} reused, {seconds:.1f}s; "
              f"manifest {layout.manifest_uri(manifest.root, manifest.run_id)}")


def _line_printer() -> Callable[[RunManifest], None]:
    """Without a terminal (CI, a launcher pod's log), one line per stage state change."""
    seen: dict[str, tuple[str, str]] = {}

    def on_change(manifest: RunManifest) -> None:
        for stage, entry in manifest.data["stages"].items():
            state = (entry["state"], str(entry.get("phase", "")))
            if seen.get(stage) != state and entry["state"] != "pending":
                seen[stage] = state
                detail = entry.get("reason", "") if entry["state"] != "running" else \
                    f"attempt {entry.get('attempt', 1)} {state[1]}".rstrip()
                console.print(f"{time.strftime('%H:%M:%S')} {manifest.run_id} {stage}: "
                              f"{entry['state']} {detail}", markup=False, highlight=False,
                              soft_wrap=True)
    return on_change


def _launch(spec: PipelineSpec, root: str, backend_name: str, run_id: str,
            stages: list[str] | None, namespace: str | None, context: str | None,
            in_cluster: bool, secret: str | None = None) -> None:
    backend = _backend(backend_name, spec, namespace, context, in_cluster, secret)
    started = time.monotonic()
    live = Live(console=console, refresh_per_second=4, transient=True) \
        if console.is_terminal else None
    launcher = Launcher(spec, root, backend, run_id, stages,
                        on_change=(lambda m: live.update(_stage_table(m))) if live
                        else _line_printer())
    try:
        if live:
            with live:
                launcher.run()
        else:
            launcher.run()
    except StageFailed:
        _summary(launcher.manifest, time.monotonic() - started)
        console.print(resume_hint(run_id, root))
        raise
    _summary(launcher.manifest, time.monotonic() - started)


@app.command()
def run(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="pipeline spec YAML")],
    storage_opt: StorageOpt = None,
    stages: Annotated[str | None, typer.Option("--stages", help="comma-separated subset")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id")] = None,
    backend: BackendOpt = "local",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a spec field: "
                                                   "stages.train.params.num_leaves=63")] = None,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace")] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context")] = None,
    in_cluster: Annotated[bool, typer.Option(help="use the pod's service account")] = False,
    secret: Annotated[str | None, typer.Option(help="Kubernetes Secret with storage "
                                               "credentials for stage pods (envFrom)")] = None,
) -> None:
    """Run a pipeline: every stage, or --stages; unchanged stages are reused."""
    def body() -> None:
        spec = load_spec(spec_path, parse_set(set_ or []))
        spec = _absolute_source(spec)
        root = _root(storage_opt, spec)
        rid = layout.check_run_id(run_id) if run_id else layout.new_run_id(spec.name)
        selected = [s.strip() for s in stages.split(",")] if stages else None
        if backend == "kubernetes":
            _require_remote(spec, root, "--backend kubernetes")
        _launch(spec, root, backend, rid, selected, namespace, context, in_cluster, secret)
    _guard(body)


def _absolute_source(spec: PipelineSpec) -> PipelineSpec:
    """Make a relative local source absolute, so stage processes anywhere find it."""
    source = spec.stages["ingest"].params.get("source", "")
    if source and "://" not in source and not os.path.isabs(source):
        return parse_spec(spec.model_dump(mode="json"), "<spec>",
                          {"stages.ingest.params.source": os.path.abspath(source)})
    return spec


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    storage_opt: StorageOpt = None,
    backend: Annotated[str | None, typer.Option("--backend")] = None,
    namespace: Annotated[str | None, typer.Option()] = None,
    context: Annotated[str | None, typer.Option()] = None,
    in_cluster: Annotated[bool, typer.Option()] = False,
    secret: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Rerun a run from the first stage that did not commit (same spec, same run id)."""
    def body() -> None:
        root = _root(storage_opt)
        manifest = RunManifest.load(root, run_id)
        spec = parse_spec(manifest.data["spec"], f"manifest of run {run_id}")
        _launch(spec, root, backend or manifest.data["backend"], run_id,
                manifest.data["selected_stages"], namespace, context, in_cluster, secret)
    _guard(body)


@app.command()
def runs(storage_opt: StorageOpt = None) -> None:
    """List the runs under a storage root, oldest first."""
    def body() -> None:
        table = Table("run", "pipeline", "state", "backend", "created", "stages")
        table.columns[0].no_wrap = True
        for m in list_runs(_root(storage_opt)):
            states = " ".join(f"{s}:{m.data['stages'][s]['state']}" for s in STAGES
                              if s in m.data["stages"])
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.data["created_at"]))
            table.add_row(m.run_id, m.data["pipeline"], m.data["state"], m.data["backend"],
                          created, states)
        out.print(table)
    _guard(body)


@app.command()
def status(run_id: Annotated[str, typer.Argument(metavar="RUN")],
           storage_opt: StorageOpt = None) -> None:
    """Show one run's stages: state, rows, time, and why."""
    def body() -> None:
        manifest = RunManifest.load(_root(storage_opt), run_id)
        out.print(_stage_table(manifest))
        for stage, entry in manifest.data["stages"].items():
            if entry["state"] == "failed":
                out.print(f"[red]{stage}[/red]: {escape(entry.get('reason', ''))}\n"
                          f"{escape(entry.get('error', ''))}", highlight=False)
    _guard(body)


@app.command()
def logs(run_id: Annotated[str, typer.Argument(metavar="RUN")],
         stage: Annotated[str, typer.Argument(metavar="STAGE")],
         attempt: Annotated[int | None, typer.Option(help="default: the last")] = None,
         storage_opt: StorageOpt = None) -> None:
    """Print a stage's log, kept in storage after pods and containers are gone."""
    def body() -> None:
        root = _root(storage_opt)
        manifest = RunManifest.load(root, run_id)
        if stage not in STAGES:
            raise BatchlineError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        folder = storage.join(layout.run_uri(root, run_id), stage, "logs")
        names = storage.list_dir(folder)
        if attempt is not None:
            names = [n for n in names if n.startswith(f"attempt-{attempt}")]
        elif names:
            last = max(int(n.split("-")[1].split(".")[0]) for n in names)
            names = [n for n in names if n.startswith(f"attempt-{last}")]
        if not names:
            state = manifest.stage(stage)["state"]
            raise BatchlineError(f"no logs for stage {stage} of run {run_id} (state: {state})")
        for name in names:
            sys.stdout.write(storage.read_text(storage.join(folder, name)))
    _guard(body)


@app.command()
def explain(run_id: Annotated[str, typer.Argument(metavar="RUN")],
            storage_opt: StorageOpt = None) -> None:
    """Say for each stage why it ran or was reused."""
    def body() -> None:
        manifest = RunManifest.load(_root(storage_opt), run_id)
        for stage in STAGES:
            entry = manifest.data["stages"].get(stage)
            if entry:
                out.print(f"{stage:9} {entry['state']:10} {entry.get('reason', '')}",
                          highlight=False, markup=False, soft_wrap=True)
    _guard(body)


@app.command()
def validate(spec_path: Annotated[str, typer.Argument(metavar="SPEC")],
             set_: Annotated[list[str] | None, typer.Option("--set")] = None) -> None:
    """Check a pipeline spec; exit 2 with the field path of every error."""
    def body() -> None:
        spec = load_spec(spec_path, parse_set(set_ or []))
        out.print(f"{spec_path}: valid pipeline {spec.name!r}")
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
           secret: Annotated[str | None, typer.Option(help="Secret with storage credentials "
                                                      "for the pods (envFrom)")] = None) -> None:
    """Print one run's Kubernetes Jobs as YAML, for people who submit with kubectl."""
    def body() -> None:
        import yaml

        from batchline.render import render_run

        if backend != "kubernetes":
            raise BatchlineError("render supports --backend kubernetes only")
        spec = load_spec(spec_path, parse_set(set_ or []))
        rid = layout.check_run_id(run_id) if run_id else layout.new_run_id(spec.name)
        root = _root(storage_opt, spec)
        _require_remote(spec, root, "render")
        docs = render_run(spec, rid, root, env_from_secret=secret)
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
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
