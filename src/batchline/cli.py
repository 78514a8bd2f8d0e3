"""The command line: a thin layer over batchline.Client (client.py).

It parses options, prints (cli_output.py), and turns every BatchlineError into
a one-paragraph message and an exit code, never a traceback:

    0 succeeded · 2 bad input, spec, option or unknown name · 3 a run that failed
    for another cause (storage down included) · 124 `wait` timed out · 130 cancelled

Only typer is imported up front, so `batchline --help` answers at once; each
command imports what it needs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from batchline import __version__
from batchline.cli_models import models_app

if TYPE_CHECKING:
    from batchline.client import Client
    from batchline.errors import BatchlineError
    from batchline.manifest import RunManifest

# An unexpected error's traceback never shows local variables: they may hold
# credentials.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False,
                  help="Model-building jobs as four containerized batch stages.")
app.add_typer(models_app, name="models")
T = TypeVar("T")
BACKEND_NAMES = "local, container, kubernetes, sagemaker"

# -- options shared by several commands ------------------------------------------------------
RunStorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="storage root, a folder or s3://bucket/prefix [default: "
    "$BATCHLINE_STORAGE, else the spec's `storage`, else ./batchline-data]")]
StorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="storage root, a folder or s3://bucket/prefix [default: "
    "$BATCHLINE_STORAGE, else ./batchline-data]")]
SpecArg = Annotated[str, typer.Argument(metavar="SPEC", help="pipeline spec (YAML file)")]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="run id (`batchline runs` lists "
                                       "them)")]
BackendOpt = Annotated[str, typer.Option("--backend", help=f"where stages run: "
                                         f"{BACKEND_NAMES}")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="override a spec field, FIELD=VALUE (YAML value), e.g. "
    "stages.train.params.num_leaves=63; repeatable")]
OptionOpt = Annotated[list[str] | None, typer.Option(
    "--option", "-o", help="a backend option, KEY=VALUE (see docs/extending.md); overrides "
    "the spec's backends.<name> section; repeatable")]
StagesOpt = Annotated[str | None, typer.Option(
    "--stages", help="comma-separated stages to run; upstream ones are reused when "
    "committed [default: all]")]
RunIdOpt = Annotated[str | None, typer.Option(
    "--run-id", help="the run's id: 1-32 lowercase letters, digits, '-' [default: pipeline "
    "name, date and a random suffix]")]
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
                                         "before reusing a committed stage")]
ForceOpt = Annotated[str | None, typer.Option("--force", help="comma-separated stages to "
                                              "rerun even if their outputs could be reused")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="rerun every selected stage; "
                                          "reuse nothing")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document (schema: "
                                       "docs/run-report.schema.json) on stdout instead of "
                                       "tables")]
TimeoutOpt = Annotated[float | None, typer.Option(
    "--timeout", min=0, help="give up after this many seconds (exit 124; the run goes on) "
    "[default: wait for the end]")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"batchline {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="print the version and exit")] = False) -> None:
    """Model-building jobs as four containerized batch stages."""


# -- printing -----------------------------------------------------------------------------
def _say(text: str, err: bool = False) -> None:
    """One line as is: never wrapped, never interpreted as markup."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _show_manifest(manifest: RunManifest) -> None:
    from batchline import cli_output

    if cli_output.is_terminal(sys.stdout):
        from rich.console import Console

        Console().print(cli_output.stage_table(manifest))
    else:
        for line in cli_output.stage_lines(manifest):
            _say(line)


def _fail(exc: BatchlineError) -> NoReturn:
    from batchline.client import error_exit_code
    from batchline.errors import StageFailed

    _say(f"error: {exc}", err=True)
    if isinstance(exc, StageFailed) and exc.log_tail:
        _say("last log lines:", err=True)
        _say(exc.log_tail.rstrip("\n"), err=True)
    raise typer.Exit(error_exit_code(exc))


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body; print BatchlineErrors without a traceback and exit."""
    from batchline.errors import BatchlineError
    from batchline.launcher import storage_error

    try:
        return fn()
    except BatchlineError as exc:
        _fail(exc)
    except OSError as exc:  # storage reached outside a wrapper: the same one paragraph
        _fail(storage_error(exc, "storage"))


def _client(storage_opt: str | None) -> Client:
    from batchline.client import Client

    return Client(storage_opt)


def _names(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value is not None else None


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    from batchline.spec import parse_set

    return parse_set(pairs or [])


def _options(pairs: list[str] | None, namespace: str | None = None, context: str | None = None,
             in_cluster: bool = False, secret: str | None = None) -> dict[str, Any]:
    """Backend options: the shorthand flags, then every --option on top."""
    given = {"namespace": namespace, "context": context, "in_cluster": in_cluster,
             "secret": secret}
    return {**{k: v for k, v in given.items() if v}, **_overrides(pairs)}


ON_SIGTERM = "BATCHLINE_ON_SIGTERM"


def _sigterm_as_interrupt() -> None:
    """A launcher told to stop (kill) cancels its stages as Ctrl-C does; one whose own pod
    is going away (BATCHLINE_ON_SIGTERM=detach, set in launcher Jobs) lets go of the run
    and leaves its stage running for the pod that replaces it."""
    from batchline.errors import LauncherDetached, SpecError

    mode = os.environ.get(ON_SIGTERM, "cancel")
    if mode not in ("cancel", "detach"):
        raise SpecError(f"{ON_SIGTERM}={mode!r}: use cancel (stop the run's stages, the "
                        "default) or detach (leave them to the next launcher)")

    def handler(signum: int, frame: object) -> None:
        if mode == "detach":
            raise LauncherDetached("stopped by SIGTERM: this launcher let go of the run; "
                                   "its running stage is left to the next launcher "
                                   "(`batchline resume` adopts it)")
        raise KeyboardInterrupt("stopped by SIGTERM")
    signal.signal(signal.SIGTERM, handler)


def _follow(start: Callable[[Any, Any], RunManifest], as_json: bool) -> None:
    """Run or resume with progress; print the summary (or JSON) and exit by the result."""
    from batchline import cli_output, report
    from batchline.client import EXIT_CANCELLED, exit_code
    from batchline.errors import BatchlineError, LauncherDetached, RunCancelled

    _sigterm_as_interrupt()
    started = time.monotonic()
    progress = cli_output.Progress()
    manifest, error = None, None
    try:
        with progress:
            manifest = start(progress.on_change, progress.on_tick)
    except LauncherDetached as exc:
        _say(f"batchline: {exc}", err=True)
        raise typer.Exit(LauncherDetached.exit_code) from None
    except KeyboardInterrupt as exc:
        error = RunCancelled(str(exc) or "cancelled (interrupted)")
        manifest = getattr(exc, "manifest", None)
    except BatchlineError as exc:
        error, manifest = exc, exc.manifest  # type: ignore[assignment]
    if manifest is None or (error is not None and not manifest.state.ended):
        # Nothing ran (bad input), or the run is not ours to report (locked by
        # another launcher): the error alone.
        _fail(error)  # type: ignore[arg-type]
    if as_json:
        _say(report.to_json(manifest))
    else:
        for line in cli_output.summary_lines(manifest, time.monotonic() - started):
            _say(line)
    if error is not None:
        if not as_json:
            from batchline.launcher import resume_hint

            _say(f"error: {error}", err=True)
            tail = getattr(error, "log_tail", "")
            if tail:
                _say("last log lines:", err=True)
                _say(tail.rstrip("\n"), err=True)
            _say(resume_hint(manifest.run_id, manifest.root), err=True)
        code = exit_code(manifest)
        raise typer.Exit(EXIT_CANCELLED if isinstance(error, RunCancelled) else code or 3)


# -- starting runs -----------------------------------------------------------------------
@app.command()
def run(
    spec_path: SpecArg,
    storage_opt: RunStorageOpt = None,
    stages: StagesOpt = None,
    run_id: RunIdOpt = None,
    backend: BackendOpt = "local",
    set_: SetOpt = None,
    option: OptionOpt = None,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    in_cluster: InClusterOpt = False,
    secret: SecretOpt = None,
    verify: VerifyOpt = False,
    force: ForceOpt = None,
    no_cache: NoCacheOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a pipeline to its end: every stage, or --stages; unchanged stages are reused."""
    def start(on_change: Any, on_tick: Any) -> RunManifest:
        return _client(storage_opt).run(
            spec_path, sets=_overrides(set_), stages=_names(stages), backend=backend,
            options=_options(option, namespace, context, in_cluster, secret), run_id=run_id,
            force=_names(force), no_cache=no_cache, verify=verify, on_change=on_change,
            on_tick=on_tick)
    _follow(start, as_json)


@app.command()
def submit(
    spec_path: SpecArg,
    storage_opt: RunStorageOpt = None,
    stages: StagesOpt = None,
    run_id: RunIdOpt = None,
    backend: BackendOpt = "local",
    set_: SetOpt = None,
    option: OptionOpt = None,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    in_cluster: InClusterOpt = False,
    secret: SecretOpt = None,
    verify: VerifyOpt = False,
    force: ForceOpt = None,
    no_cache: NoCacheOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a run and print its id at once (its launcher runs detached); then `wait`."""
    def body() -> None:
        client = _client(storage_opt)
        rid = client.submit(
            spec_path, sets=_overrides(set_), stages=_names(stages), backend=backend,
            options=_options(option, namespace, context, in_cluster, secret), run_id=run_id,
            force=_names(force), no_cache=no_cache, verify=verify)
        _say(json.dumps({"run_id": rid}) if as_json else rid)
    _guard(body)


@app.command()
def resume(
    run_id: RunArg,
    storage_opt: StorageOpt = None,
    backend: Annotated[str | None, typer.Option(
        "--backend", help=f"where stages run: {BACKEND_NAMES} [default: the run's]")] = None,
    set_: SetOpt = None,
    option: OptionOpt = None,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    in_cluster: InClusterOpt = False,
    secret: SecretOpt = None,
    verify: VerifyOpt = False,
    force: ForceOpt = None,
    no_cache: NoCacheOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Continue a run from the first stage that did not commit; --set changes its spec
    (recorded; `explain` shows it), and a stage whose inputs changed runs again."""
    def start(on_change: Any, on_tick: Any) -> RunManifest:
        return _client(storage_opt).resume(
            run_id, sets=_overrides(set_), backend=backend,
            options=_options(option, namespace, context, in_cluster, secret),
            force=_names(force), no_cache=no_cache, verify=verify, on_change=on_change,
            on_tick=on_tick)
    _follow(start, as_json)


@app.command()
def listen(
    spec_path: SpecArg,
    queue: Annotated[str, typer.Option("--queue", help="SQS queue URL receiving the bucket's "
                                       "events (S3 notifications or EventBridge)")],
    storage_opt: RunStorageOpt = None,
    backend: BackendOpt = "local",
    set_: SetOpt = None,
    option: OptionOpt = None,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    in_cluster: InClusterOpt = False,
    secret: SecretOpt = None,
    wait_seconds: Annotated[int, typer.Option(min=0, max=20, help="SQS long-poll wait")] = 20,
    max_messages: Annotated[int, typer.Option(min=0, help="stop after handling this many "
                                              "messages (0: run until SIGTERM)")] = 0,
) -> None:
    """Start one run per new object that the spec's `trigger:` watches (--set
    trigger.bucket=... fills it in), from an SQS queue; duplicates and other listeners
    start nothing twice. Runs until SIGTERM."""
    if "BATCHLINE_LOG_LEVEL" not in os.environ:
        logging.getLogger("batchline").setLevel(logging.INFO)  # a daemon logs its events

    def body() -> None:
        from batchline.event_runs import EventRunner
        from batchline.holds import hold_from_env
        from batchline.listener import Listener, stop_on_sigterm

        runner = EventRunner(spec_path, storage_opt, backend,
                             _options(option, namespace, context, in_cluster, secret),
                             checkpoint=hold_from_env(), sets=_overrides(set_))
        listener = Listener(runner, queue, wait_seconds=wait_seconds,
                            max_messages=max_messages)
        stop_on_sigterm(listener)
        counts = listener.run()
        _say(json.dumps(dict(counts), sort_keys=True))
    _guard(body)


# -- following runs ------------------------------------------------------------------------
@app.command()
def wait(run_id: RunArg, storage_opt: StorageOpt = None, timeout: TimeoutOpt = None,
         as_json: JsonOpt = False) -> None:
    """Wait for a run to end and exit with its code (0, 2, 3, 130; 124 on --timeout)."""
    def body() -> None:
        from batchline import report
        from batchline.client import exit_code

        manifest = _client(storage_opt).wait(run_id, timeout)
        if as_json:
            _say(report.to_json(manifest))
        else:
            _show_manifest(manifest)
        raise typer.Exit(exit_code(manifest))
    _guard(body)


@app.command()
def cancel(run_id: RunArg, storage_opt: StorageOpt = None,
           timeout: Annotated[float, typer.Option(
               "--timeout", min=0, help="seconds to wait for the launcher to stop its "
               "stages")] = 60.0) -> None:
    """Stop every running stage of a run on its backend and mark the run cancelled."""
    def body() -> None:
        manifest = _client(storage_opt).cancel(run_id, timeout)
        _show_manifest(manifest)
    _guard(body)


@app.command()
def runs(storage_opt: StorageOpt = None, as_json: Annotated[bool, typer.Option(
        "--json", help="print a JSON list of run reports")] = False) -> None:
    """List the runs under a storage root, oldest first."""
    def body() -> None:
        from batchline import cli_output, report

        manifests, unreadable = _client(storage_opt).runs()
        if as_json:
            _say(json.dumps([report.run_report(m).model_dump(mode="json", by_alias=True)
                             for m in manifests], indent=2))
            return
        rows = []
        for m in manifests:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at))
            states = " ".join(f"{s}:{e.state}" for s, e in m.stages.items())
            rows.append((m.run_id, m.pipeline, m.shown_state(), m.backend, created, states,
                         cli_output.figures(m)))
        rows += [(rid, "", "unreadable", "", "", "manifest missing or damaged: "
                  "`batchline status` says more", "") for rid in unreadable]
        if cli_output.is_terminal(sys.stdout):
            from rich.console import Console
            from rich.table import Table

            table = Table("run", "pipeline", "state", "backend", "created", "stages", "figures")
            table.columns[0].no_wrap = True
            for row in rows:
                table.add_row(*row)
            Console().print(table)
        else:
            for row in rows:
                _say("\t".join(row))
    _guard(body)


@app.command()
def status(run_id: RunArg, storage_opt: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """Show one run's stages (state, rows, time, why) and exit with the run's code
    (0 while it runs)."""
    def body() -> None:
        from batchline import report
        from batchline.client import exit_code
        from batchline.manifest import RunState, StageState

        client = _client(storage_opt)
        manifest = client.status(run_id)
        if as_json:
            _say(report.to_json(manifest))
        else:
            _show_manifest(manifest)
            from batchline.cli_output import figures

            shown = figures(manifest)
            if shown:
                _say(f"figures: {shown}")
            if manifest.reason and manifest.state is not RunState.SUCCEEDED:
                _say(f"run: {manifest.reason}")
            for stage, entry in manifest.stages.items():
                if entry.state is StageState.FAILED:
                    _say(f"{stage}: {entry.reason}\n{entry.error}".rstrip())
                    tail = _log_tail(client, run_id, stage)
                    if tail:
                        _say(f"last log lines of {stage}:\n{tail}")
        running = manifest.shown_state() in ("pending", "running")
        raise typer.Exit(0 if running else exit_code(manifest))
    _guard(body)


def _log_tail(client: Client, run_id: str, stage: str, lines: int = 20) -> str:
    from batchline.errors import BatchlineError

    try:
        text = client.logs(run_id, stage)
    except BatchlineError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


@app.command()
def logs(run_id: RunArg,
         stage: Annotated[str, typer.Argument(metavar="STAGE", help="stage name")],
         attempt: Annotated[int | None, typer.Option(help="attempt number [default: the "
                                                     "last]")] = None,
         storage_opt: StorageOpt = None) -> None:
    """Print a stage's log, kept in storage after pods and containers are gone."""
    def body() -> None:
        sys.stdout.write(_client(storage_opt).logs(run_id, stage, attempt))
    _guard(body)


@app.command("report")
def report_(run_id: RunArg, storage_opt: StorageOpt = None,
            as_json: Annotated[bool, typer.Option(
                "--json", help="print the report's content as one JSON document "
                "(schema: docs/report.schema.json) instead of writing the file")] = False,
            out: Annotated[str | None, typer.Option(
                "--out", help="write the HTML here (a path or s3:// URI) [default: "
                "runs/RUN/report.html under the storage root]")] = None) -> None:
    """Write the run's report: one self-contained HTML file (stages and timings, data
    quality, drift per feature, calibration and ROC, accuracy over time, a fleet's
    segments), and print its URI."""
    def body() -> None:
        client = _client(storage_opt)
        if as_json:
            from batchline import run_report

            _say(run_report.to_json(client.report_content(run_id)))
            return
        _say(client.report(run_id, out))
    _guard(body)


@app.command()
def explain(run_id: RunArg, storage_opt: StorageOpt = None) -> None:
    """Say for each stage why it ran or was reused, and what `resume --set` changed."""
    def body() -> None:
        for line in _client(storage_opt).explain(run_id):
            _say(line)
    _guard(body)


# -- specs, data and manifests --------------------------------------------------------------
@app.command()
def validate(spec_path: SpecArg, set_: SetOpt = None) -> None:
    """Check a pipeline spec; exit 2 naming every bad field at once."""
    def body() -> None:
        from batchline.spec import load_spec

        spec = load_spec(spec_path, _overrides(set_))
        _say(f"{spec_path}: valid pipeline {spec.name!r} ({' -> '.join(spec.pipeline.order)})")
    _guard(body)


@app.command("demo-data")
def demo_data(rows: Annotated[int, typer.Option(min=500, help="encounters to write (at "
                                                "least 500: the generator's patient mix)")]
              = 100_000,
              out_dir: Annotated[str, typer.Option("--out", help="folder to write "
                                                   "encounters.csv to")] = "demo-data",
              seed: Annotated[int, typer.Option(help="random seed; the same seed gives the "
                                                "same file")] = 42,
              hospitals: Annotated[int | None, typer.Option(
                  min=1, max=999, help="a fleet: this many hospitals (H000, H001, ...) of "
                  "varied size (the largest about 10x the smallest), each with its own effects; "
                  "e.g. --hospitals 500 --rows 4000000 for about 2,000-20,000 rows each")] = None,
              population_days: Annotated[int, typer.Option(
                  min=0, help="days before the snapshot whose outcomes are not known yet "
                  "(the population to score); 0: every outcome has matured, for monitoring")]
              = 45,
              label_change: Annotated[str | None, typer.Option(
                  help="a date (2024-01-01) from which the label model changes, so a model "
                  "trained before it degrades; for trying out monitoring")] = None,
              ) -> None:
    """Write synthetic readmission encounters (CSV) with a known best AUC."""
    from batchline.demo_data import generate

    if "://" in out_dir:
        _say(f"error: --out {out_dir}: demo-data writes to a local folder; copy the file to "
             "object storage afterwards (aws s3 cp, or --set a local source)", err=True)
        raise typer.Exit(2)
    started = time.monotonic()
    try:
        summary = generate(rows, out_dir, seed=seed, hospitals=hospitals or 60,
                           fleet=hospitals is not None, population_days=population_days,
                           label_change=label_change)
    except ValueError as exc:
        _say(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _say(f"wrote {summary.rows:,} encounters ({summary.labelled:,} labelled, "
         f"{summary.population:,} to score) to {summary.path} in "
         f"{time.monotonic() - started:.1f}s; prevalence {summary.prevalence:.3f}")
    _say(f"best achievable AUC on the validation slice (the most recent fifth of labelled "
         f"rows, what train's time split validates on; the run summary's generator_best_auc): "
         f"{summary.best_auc_recent:.4f}; on all labelled rows: {summary.best_auc:.4f}")


@app.command()
def render(spec_path: SpecArg,
           backend: Annotated[str, typer.Option("--backend", help="kubernetes (Jobs as "
                                                "YAML for kubectl) or sagemaker (requests "
                                                "and IAM policies as JSON)")] = "kubernetes",
           run_id: RunIdOpt = None,
           storage_opt: RunStorageOpt = None,
           set_: SetOpt = None,
           option: OptionOpt = None,
           secret: SecretOpt = None) -> None:
    """Print one run's Kubernetes Jobs as YAML (for kubectl), or with --backend sagemaker
    its Create*Job requests and IAM policies as JSON (for the aws CLI)."""
    def body() -> None:
        import yaml

        from batchline import layout
        from batchline.backends import validate_options
        from batchline.client import _require_remote
        from batchline.errors import SpecError
        from batchline.render import render_run, render_sagemaker
        from batchline.spec import load_spec

        if backend not in ("kubernetes", "sagemaker"):
            raise SpecError(f"render --backend {backend}: only kubernetes (Jobs) and sagemaker "
                            "(Create*Job requests) have something to render; local and "
                            "container runs start with `batchline run`")
        spec = load_spec(spec_path, _overrides(set_))
        rid = layout.check_run_id(run_id) if run_id is not None else layout.new_run_id(spec.name)
        root = _client(storage_opt).root(spec)
        _require_remote(spec, root, backend)
        given = {**spec.backend_options(backend), **_options(option, secret=secret)}
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
          format_: Annotated[str | None, typer.Option("--format", help="csv, jsonl or parquet "
                                                      "[default: from the extension]")] = None,
          delimiter: Annotated[str, typer.Option(help="CSV field separator")] = ",",
          encoding: Annotated[str | None, typer.Option(help="text encoding [default: UTF-8]")]
          = None) -> None:
    """Print a ready stages.ingest.params block (columns, types, roles) inferred from a sample."""
    def body() -> None:
        from pydantic import ValidationError

        from batchline.errors import SpecError
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
