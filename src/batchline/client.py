"""The Python client: the CLI's verbs for notebooks, Airflow tasks and CI scripts.

    from batchline import Client
    client = Client(storage="s3://bucket/batchline")
    run = client.run("jobs/readmission.yaml", sets={"stages.train.params.num_leaves": 63})
    client.predictions(run.run_id).to_pandas()

The CLI (cli.py) is a thin layer over this class: it parses options and
prints; every decision about runs is made here or in the launcher. Methods
raise BatchlineError subclasses (SpecError for bad input, StageFailed when a
stage fails, RunCancelled, WaitTimedOut); `exit_code(manifest)` maps a run's
end to the exit codes the CLI documents.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchline import layout, storage
from batchline.backends import REMOTE, get_backend
from batchline.causes import Cause
from batchline.errors import BatchlineError, RunCancelled, SpecError, StageFailed, WaitTimedOut
from batchline.launcher import Launcher, OnChange
from batchline.lease import Lease, RunLocked
from batchline.manifest import RunManifest, RunState, StageState, list_runs
from batchline.spec import PipelineSpec, load_spec, parse_spec
from batchline.stages import STAGES, producers

if TYPE_CHECKING:
    import pyarrow as pa

    from batchline.registry import Registry
    from batchline.run_report import RunContent

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "./batchline-data"
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 3
EXIT_TIMED_OUT = WaitTimedOut.exit_code
EXIT_CANCELLED = RunCancelled.exit_code


def exit_code(manifest: RunManifest) -> int:
    """The CLI's exit code for a run: 0 succeeded, 2 bad input, 3 failed otherwise,
    130 cancelled; a run still going (or stale) is 3, it did not succeed."""
    if manifest.state is RunState.SUCCEEDED:
        return EXIT_OK
    if manifest.state is RunState.CANCELLED:
        return EXIT_CANCELLED
    causes = [manifest.cause] + [s.cause for s in manifest.stages.values()
                                 if s.state is StageState.FAILED]
    return EXIT_BAD_INPUT if Cause.BAD_INPUT in causes else EXIT_RUN_FAILED


def error_exit_code(exc: BatchlineError) -> int:
    """The CLI's exit code for an error: 2 for bad input anywhere, 124/130 as documented,
    3 for everything else (a stage failed, storage down)."""
    if exc.exit_code in (EXIT_BAD_INPUT, EXIT_TIMED_OUT, EXIT_CANCELLED):
        return exc.exit_code
    return EXIT_RUN_FAILED


@dataclass(frozen=True)
class ModelArtifact:
    """Where a run's trained model is, and what it must hash to."""

    uri: str  # model.txt, LightGBM's own text format
    sha256: str
    card: dict[str, Any]  # model.json: features, split, metrics, parameters


class Client:
    """Runs pipelines and reads what they committed, under one storage root."""

    def __init__(self, storage: str | None = None) -> None:
        # None: $BATCHLINE_STORAGE, else the spec's `storage` for run/submit,
        # else ./batchline-data.
        self.storage = storage

    # -- starting runs ----------------------------------------------------------------
    def run(self, spec: str | PipelineSpec, *, sets: Mapping[str, Any] | None = None,
            stages: Iterable[str] | None = None, backend: str = "local",
            options: Mapping[str, Any] | None = None, run_id: str | None = None,
            force: Iterable[str] | None = None, no_cache: bool = False, verify: bool = False,
            on_change: OnChange | None = None, on_tick: OnChange | None = None) -> RunManifest:
        """Run a pipeline to its end; returns the manifest of a succeeded run.

        Raises StageFailed (its `manifest` attribute holds the run) when a stage
        fails, RunCancelled when cancelled, SpecError for bad input.
        """
        plan = self._plan(spec, sets, stages, backend, options, run_id, force, no_cache)
        return self._launch(plan, verify, on_change, on_tick)

    def submit(self, spec: str | PipelineSpec, *, sets: Mapping[str, Any] | None = None,
               stages: Iterable[str] | None = None, backend: str = "local",
               options: Mapping[str, Any] | None = None, run_id: str | None = None,
               force: Iterable[str] | None = None, no_cache: bool = False,
               verify: bool = False, launcher: str | None = None) -> str:
        """Start a run and return its id at once; `wait` follows it.

        The run's manifest is written first (pending, with the spec frozen in
        it), then a launcher resumes it: a process detached from this one, or
        with `backend="kubernetes"` a launcher Job in the cluster, or with
        `launcher="sagemaker"` a launcher Processing Job (what a Lambda function
        starts). The run outlives the caller, and `wait`, `status` and `cancel`
        find it at once.
        """
        plan = self._plan(spec, sets, stages, backend, options, run_id, force, no_cache)
        if storage.exists(layout.manifest_uri(plan.root, plan.run_id)):
            raise SpecError(f"run {plan.run_id} already exists under {plan.root}; "
                            f"`batchline resume {plan.run_id}` continues it")
        manifest = RunManifest.new(plan.root, plan.run_id, plan.spec.name, backend,
                                   plan.spec.model_dump(mode="json"), plan.selected)
        manifest.backend_options = plan.options
        manifest.force = sorted(plan.force)
        manifest.verify = verify
        manifest.save()
        start_launcher(manifest, plan.spec.image("launcher"), launcher)
        return plan.run_id

    def resume(self, run_id: str, *, sets: Mapping[str, Any] | None = None,
               backend: str | None = None, options: Mapping[str, Any] | None = None,
               force: Iterable[str] | None = None, no_cache: bool = False,
               verify: bool = False, on_change: OnChange | None = None,
               on_tick: OnChange | None = None) -> RunManifest:
        """Continue a run from the first stage that did not commit.

        `sets` changes params or sources of the frozen spec (the change is
        recorded in the manifest and `explain` shows it); a stage whose key
        changed runs again, the others are reused.
        """
        manifest = self.status(run_id)
        spec = parse_spec(manifest.spec, f"manifest of run {run_id}", dict(sets or {}))
        spec = _absolute_sources(spec)
        name = backend or manifest.backend
        merged = {**(manifest.backend_options if name == manifest.backend else {}),
                  **dict(options or {})}
        # A submitted run's --force is for its first launch, not every resume.
        first = manifest.state is RunState.PENDING and not any(
            s.attempts for s in manifest.stages.values())
        forced = list(force or []) + (manifest.force if first else [])
        plan = self._plan(spec, None, manifest.selected_stages, name, merged, run_id, forced,
                          no_cache, root=manifest.root)
        return self._launch(plan, verify or (first and manifest.verify), on_change, on_tick)

    # -- following runs ---------------------------------------------------------------
    def runs(self) -> tuple[list[RunManifest], list[str]]:
        """Every run under the root, oldest first, and the ids of unreadable ones."""
        return list_runs(self.root())

    def status(self, run_id: str) -> RunManifest:
        return RunManifest.load(self.root(), layout.check_run_id(run_id))

    def wait(self, run_id: str, timeout: float | None = None,
             poll_seconds: float = 2.0) -> RunManifest:
        """Block until the run ends and return its manifest (whatever the end).

        WaitTimedOut after `timeout` seconds (the run goes on); a run whose
        launcher is gone (`stale`) is returned as it is, it will not end by itself.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            manifest = self.status(run_id)
            if manifest.state not in (RunState.PENDING, RunState.RUNNING) or \
                    manifest.shown_state() == "stale":
                return manifest
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(f"run {run_id} is still {manifest.state} after {timeout:g} s; "
                                   f"`batchline wait {run_id}` again, or `batchline cancel "
                                   f"{run_id}`")
            time.sleep(poll_seconds if deadline is None
                       else max(0.0, min(poll_seconds, deadline - time.monotonic())))

    def cancel(self, run_id: str, timeout: float = 60.0) -> RunManifest:
        """Stop every running stage of a run on its backend and mark it cancelled.

        A live launcher is asked through storage (it stops its stages within a
        few seconds); a run whose launcher is gone is marked here.
        """
        manifest = self.status(run_id)
        if manifest.state not in (RunState.PENDING, RunState.RUNNING):
            raise SpecError(f"run {run_id} has already ended ({manifest.state}); nothing to "
                            "cancel")
        storage.write_text(layout.cancel_uri(manifest.root, run_id), json.dumps(
            {"requested_at": time.time(), "by": f"{_user()}@{socket.gethostname()}"}))
        if manifest.shown_state() == "stale":
            return self._cancel_orphan(manifest)
        try:
            return self._wait_cancelled(run_id, timeout)
        except WaitTimedOut:
            # No launcher took the request (it died, or never started): do it here.
            return self._cancel_orphan(self.status(run_id))

    def explain(self, run_id: str) -> list[str]:
        """Why each stage ran or was reused, and what was changed on resume."""
        manifest = self.status(run_id)
        lines = [f"changed by {c.by}: " + ", ".join(f"{k}={v!r}" for k, v in c.fields.items())
                 for c in manifest.changes]
        for stage, entry in manifest.stages.items():
            why = entry.reason.removeprefix(str(entry.state)).removeprefix("ran:").strip()
            lines.append(f"{stage}: {entry.state}" + (f" ({why})" if why else ""))
        return lines

    def logs(self, run_id: str, stage: str, attempt: int | None = None) -> str:
        """A stage's log (the last attempt's by default), kept in storage."""
        manifest = self.status(run_id)
        entry = manifest.stages.get(stage)
        if entry is None:
            hint = _did_you_mean(stage, manifest.stages)
            raise SpecError(f"run {run_id} has no stage {stage!r}{hint}; its stages: "
                            f"{', '.join(manifest.stages)}")
        numbers = sorted({a.number for a in entry.attempts})
        chosen = attempt if attempt is not None else (numbers[-1] if numbers else None)
        if chosen is None:
            raise SpecError(f"stage {stage} of run {run_id} has no attempts "
                            f"(state: {entry.state}); it never started")
        if chosen not in numbers:
            raise SpecError(f"stage {stage} of run {run_id} has no attempt {chosen}; "
                            f"its attempts: {', '.join(map(str, numbers))}")
        uris = [uri for a in entry.attempts if a.number == chosen for uri in a.logs]
        if not uris:
            raise SpecError(f"attempt {chosen} of stage {stage} (run {run_id}) left no log "
                            f"yet (state: {entry.state})")
        return "".join(storage.read_text(uri) for uri in uris)

    def report(self, run_id: str, out: str | None = None) -> str:
        """Write the run's report, one self-contained HTML file (`runs/<id>/report.html`,
        or `out`), and return its URI; `report_content` is the same as data."""
        from batchline import report_html

        return report_html.write(self.status(run_id), out)[0]

    def report_content(self, run_id: str) -> RunContent:
        """What the run's report shows (stages, data quality, model, drift, accuracy,
        a fleet's segments), as the document `batchline report --json` prints."""
        from batchline import run_report

        return run_report.build(self.status(run_id))

    # -- reading outputs ----------------------------------------------------------------
    def dataset(self, run_id: str, output: str) -> pa.Table:
        """A committed output of a run (`encounters`, `features`, `predictions`, ...)."""
        return storage.open_dataset(self._output_uri(run_id, output)).to_table()

    def predictions(self, run_id: str) -> pa.Table:
        return self.dataset(run_id, "predictions")

    def metrics(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Every committed output's metrics, by output name (from `_SUCCESS.json`)."""
        manifest = self.status(run_id)
        return {name: storage.committed(uri).metrics
                for entry in manifest.stages.values() if entry.state.done
                for name, uri in entry.outputs.items()}

    def model(self, run_id: str) -> ModelArtifact:
        """The run's model file, its committed sha256 and its model card."""
        uri = self._output_uri(run_id, "model")
        record = storage.committed(uri)
        files = {f.path.rsplit("/", 1)[-1]: f for f in record.files}
        card = json.loads(storage.read_text(storage.join(uri, files["model.json"].path)))
        return ModelArtifact(storage.join(uri, files["model.txt"].path),
                             files["model.txt"].sha256, card)

    def _output_uri(self, run_id: str, output: str) -> str:
        manifest = self.status(run_id)
        stage = producers().get(output)
        if stage is None:
            raise SpecError(f"no stage writes an output named {output!r}"
                            f"{_did_you_mean(output, producers())}; outputs: "
                            f"{', '.join(producers())}")
        entry = manifest.stages.get(stage)
        if entry is None or not entry.state.done or output not in entry.outputs:
            state = entry.state if entry is not None else "not in this run"
            raise SpecError(f"run {run_id} has no committed {output!r} ({stage}: {state})")
        return entry.outputs[output]

    # -- the plumbing ------------------------------------------------------------------
    # -- fleets and the model registry ---------------------------------------------------
    def leaderboard(self, run_id: str) -> list[dict[str, Any]]:
        """A fleet run's leaderboard: every segment with its status, metrics and cause."""
        from batchline import fleet

        manifest = self.status(run_id)
        outputs = manifest.stage("train").outputs if "train" in manifest.stages else {}
        if "model" not in outputs:
            raise SpecError(f"run {run_id} has no committed train stage; its leaderboard is "
                            "written when train succeeds")
        rows = fleet.read_leaderboard(outputs["model"])
        # A row keeps the gate's verdict; the registry has how it ended (the launcher
        # moved the alias, lost to another run, or promoted nothing as the fleet failed).
        registry = self.registry(manifest.pipeline)
        for row in rows:
            if row.get("decision"):
                row["decision"] = registry.decision(row["segment"], run_id) or row["decision"]
        return rows

    def registry(self, pipeline: str) -> Registry:
        """The model registry of `pipeline` under this client's storage root."""
        from batchline.registry import Registry

        return Registry(self.root(), pipeline)

    def registered_pipelines(self) -> list[str]:
        """Pipelines with models in the registry."""
        return storage.list_dir(storage.join(self.root(), "registry"))

    def root(self, spec: PipelineSpec | None = None) -> str:
        """The storage root: the client's, $BATCHLINE_STORAGE, the spec's, or the default."""
        root = self.storage or os.environ.get("BATCHLINE_STORAGE") or (
            spec.storage if spec else DEFAULT_STORAGE)
        storage.resolve(root)  # refuses s3:// without a bucket, unknown schemes
        if "://" not in root:
            root = os.path.abspath(root)
            if os.path.exists(root) and not os.path.isdir(root):
                raise SpecError(f"storage {root} is a file; give a folder or s3://bucket/prefix")
        return root.rstrip("/")

    def _plan(self, spec: str | PipelineSpec, sets: Mapping[str, Any] | None,
              stages: Iterable[str] | None, backend: str, options: Mapping[str, Any] | None,
              run_id: str | None, force: Iterable[str] | None, no_cache: bool,
              root: str | None = None) -> _Plan:
        if isinstance(spec, PipelineSpec):
            parsed = parse_spec(spec.model_dump(mode="json"), "<spec>", dict(sets or {})) \
                if sets else spec
        else:
            parsed = load_spec(spec, dict(sets or {}))
        parsed = _absolute_sources(parsed)
        root = root or self.root(parsed)
        rid = layout.check_run_id(run_id) if run_id is not None else \
            layout.new_run_id(parsed.name)
        selected = _known(stages, parsed, "--stages")
        parsed = _score_from_registry(parsed, root, selected)
        forced = list(parsed.pipeline.order) if no_cache else _known(force, parsed, "--force")
        merged = {**parsed.backend_options(backend), **dict(options or {})}
        _require_remote(parsed, root, backend)
        get_backend(backend, merged, where=f"--option (backend {backend})")  # validates
        return _Plan(parsed, root, rid, backend, merged, selected or list(parsed.pipeline.order),
                     list(forced or []))

    def _launch(self, plan: _Plan, verify: bool, on_change: OnChange | None,
                on_tick: OnChange | None) -> RunManifest:
        backend = get_backend(plan.backend, plan.options,
                              where=f"--option (backend {plan.backend})")
        launcher = Launcher(plan.spec, plan.root, backend, plan.run_id, plan.selected,
                            on_change=on_change, verify=verify, force=plan.force,
                            on_tick=on_tick, backend_options=plan.options)
        try:
            return launcher.run()
        except (BatchlineError, KeyboardInterrupt) as exc:
            # The run as it ended, for callers that report it (the CLI's summary).
            setattr(exc, "manifest", launcher.manifest)  # noqa: B010 - KeyboardInterrupt too
            raise

    def _wait_cancelled(self, run_id: str, timeout: float) -> RunManifest:
        manifest = self.wait(run_id, timeout=timeout, poll_seconds=0.5)
        if manifest.shown_state() == "stale":
            raise WaitTimedOut("the launcher is gone")
        return manifest

    def _cancel_orphan(self, manifest: RunManifest) -> RunManifest:
        """Mark a run without a live launcher cancelled (holding its lease to do so)."""
        lease = Lease(manifest.root, manifest.run_id)
        try:
            lease.acquire()
        except RunLocked:
            raise BatchlineError(f"run {manifest.run_id}: cancel was requested but its "
                                 "launcher did not stop in time; `batchline status` shows "
                                 "when it does") from None
        try:
            manifest = self.status(manifest.run_id)
            for stage, entry in manifest.stages.items():
                if entry.state in (StageState.RUNNING, StageState.PENDING) and entry.attempts:
                    manifest.event(stage, StageState.CANCELLED, cause=Cause.CANCELLED,
                                   reason="cancelled with `batchline cancel` (its launcher "
                                   "was gone; a stage still running on the backend is not "
                                   "reachable from here)")
            manifest.set_state(RunState.CANCELLED, "cancelled with `batchline cancel`",
                               Cause.CANCELLED)
            storage.delete_file(layout.cancel_uri(manifest.root, manifest.run_id))
            return manifest
        finally:
            lease.release()


@dataclass(frozen=True)
class _Plan:
    spec: PipelineSpec
    root: str
    run_id: str
    backend: str
    options: dict[str, Any]
    selected: list[str]
    force: list[str]


def _known(names: Iterable[str] | None, spec: PipelineSpec, option: str) -> list[str] | None:
    if names is None:
        return None
    names = list(names)
    unknown = [n for n in names if n not in spec.pipeline.order]
    if unknown:
        hints = "".join(_did_you_mean(n, spec.pipeline.order) for n in unknown)
        raise SpecError(f"{option}: unknown stage(s) {', '.join(unknown)}{hints}; this pipeline "
                        f"has: {', '.join(spec.pipeline.order)}")
    return names


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _score_from_registry(spec: PipelineSpec, root: str,
                         selected: list[str] | None) -> PipelineSpec:
    """A fleet's scoring-only run (`--stages ingest,features,score`) scores with the
    registry's champions: score reads their snapshot instead of a train run's models."""
    if spec.segments is None or not selected or "train" in selected or \
            "score" not in selected or "model" in spec.stages["score"].inputs:
        return spec
    from batchline.registry import Registry
    from batchline.registry_serving import serving_uri

    uri = serving_uri(Registry(root, spec.name))
    if storage.read_success(uri) is None:
        raise SpecError(f"a scoring-only run of fleet {spec.name!r} scores with the "
                        f"registry's champions, and {uri} is not committed; train the fleet "
                        f"first, or run `batchline models publish {spec.name}`")
    data = spec.model_dump(mode="json")
    data["stages"]["score"]["inputs"] = {"model": uri}
    return parse_spec(data, "<spec>")


def _absolute_sources(spec: PipelineSpec) -> PipelineSpec:
    """Make relative local sources absolute, so stage processes anywhere find them."""
    overrides = {}
    for stage, stage_spec in spec.stages.items():
        for name in STAGES[stage].source_params:
            source = str(stage_spec.params.get(name, ""))
            if source and "://" not in source and not os.path.isabs(source):
                overrides[f"stages.{stage}.params.{name}"] = os.path.abspath(source)
    return parse_spec(spec.model_dump(mode="json"), "<spec>", overrides) if overrides else spec


def _require_remote(spec: PipelineSpec, root: str, backend: str) -> None:
    """Stages that run on other machines cannot see this machine's folders."""
    if backend not in REMOTE:
        return
    uris = [("storage", root)]
    for stage in spec.stages:
        params = spec.stages[stage].params
        uris += [(f"stages.{stage}.params.{p}", str(params.get(p, "")))
                 for p in STAGES[stage].source_params]
    for name, uri in uris:
        if not uri.startswith("s3://"):
            raise SpecError(f"--backend {backend}: {name} is {uri!r}; its pods cannot see "
                            "this machine's folders, use an s3:// URI")


LAUNCHERS = ("local", "kubernetes", "sagemaker")


def start_launcher(manifest: RunManifest, image: str, launcher: str | None = None) -> str:
    """Start the launcher of a submitted run: a detached process ("local"), a Job in the
    cluster ("kubernetes", the default for that backend) or a SageMaker Processing Job
    ("sagemaker"). A launcher that exists already for the run (a Job or job of the same
    name) is kept, never doubled. Returns where it runs."""
    where = launcher or ("kubernetes" if manifest.backend == "kubernetes" else "local")
    if where not in LAUNCHERS:
        raise SpecError(f"launcher {where!r}: use one of {', '.join(LAUNCHERS)}")
    if where == "local":
        _start_detached(manifest.root, manifest.run_id)
        return "a detached local process"
    from batchline.backends import validate_options

    options = validate_options(where, manifest.backend_options if manifest.backend == where
                               else {}, "--option")
    if where == "kubernetes":
        # The launcher runs in the cluster, next to its stages.
        from batchline.backends.kubernetes_launcher import create_launcher_job

        ref = create_launcher_job(manifest.run_id, manifest.root, image, options)
    else:
        from batchline.backends.sagemaker_launcher import create_launcher_processing_job

        ref = create_launcher_processing_job(manifest.run_id, manifest.root, image, options)
    log.info("run %s: launcher %s job %s", manifest.run_id, where, ref)
    return f"{where} job {ref}"


def _start_detached(root: str, run_id: str) -> None:
    """A launcher in its own session, so it outlives the caller (and its Ctrl-C)."""
    log_path = _launcher_log_path(root, run_id)
    with open(log_path, "ab") as log:
        subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "batchline", "resume", run_id, "--storage", root],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, "BATCHLINE_DETACHED": "1"})


def _launcher_log_path(root: str, run_id: str) -> str:
    """Where a detached launcher's own output goes: beside the run on a local root, else
    in the temp folder (stage logs are in storage either way)."""
    if "://" not in root:
        folder = os.path.dirname(layout.manifest_uri(root, run_id))
    else:
        import tempfile

        folder = os.path.join(tempfile.gettempdir(), "batchline-launchers")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"launcher-{run_id}.log" if "://" in root else "launcher.log")


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


__all__ = ["Client", "ModelArtifact", "StageFailed", "error_exit_code", "exit_code"]
