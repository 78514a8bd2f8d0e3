"""The launcher owns policy: plan, cache, retries by cause, shard fan-out, resume.

It walks the spec's stages in the order their datasets imply. For each one it
computes the cache key; if a commit with that key exists (in this run, for a
resume, or in any earlier run) and its files are intact, the stage is reused
and nothing is launched. Otherwise it writes the task to storage, submits it
to the backend, waits, and retries by cause. Every state change is written to
the run manifest before anything else happens.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from batchline import cache, interrupts, layout, storage
from batchline.backends.base import Backend, Handle
from batchline.causes import Cause
from batchline.errors import (
    BatchlineError,
    LauncherDetached,
    RunCancelled,
    SpecError,
    StageFailed,
    StorageUnavailable,
)
from batchline.lease import Lease, LeaseLost
from batchline.manifest import (
    Attempt,
    Change,
    RunManifest,
    RunState,
    StageState,
    list_runs,
)
from batchline.retry import describe
from batchline.spec import PipelineSpec
from batchline.spec_errors import did_you_mean
from batchline.stages import STAGES
from batchline.storage_errors import misconfiguration
from batchline.task import Resources, StageResult, StageTask

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 10  # evictions do not use up retries, but never loop forever

OnChange = Callable[[RunManifest], None]
CANCEL_CHECK_SECONDS = 2.0  # how often a running launcher looks for `batchline cancel`


class Launcher:
    """Runs one pipeline run (new or resumed) on one backend."""

    def __init__(self, spec: PipelineSpec, root: str, backend: Backend[Any], run_id: str,
                 stages: list[str] | None = None, on_change: OnChange | None = None,
                 verify: bool = False, force: list[str] | None = None,
                 on_tick: OnChange | None = None,
                 backend_options: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.pipeline = spec.pipeline
        for option, names in (("--stages", stages), ("--force", force)):
            unknown = [s for s in names or [] if s not in self.pipeline.order]
            if unknown:
                guesses = "".join(did_you_mean(s, self.pipeline.order) for s in unknown)
                raise SpecError(f"{option}: unknown stages {unknown}{guesses}; this pipeline "
                                f"has: {', '.join(self.pipeline.order)}")
        self.root = root.rstrip("/")
        self.backend = backend
        self.run_id = layout.check_run_id(run_id)
        self.selected = [s for s in self.pipeline.order if s in (stages or self.pipeline.order)]
        self.verify = verify
        self.force = set(force or [])
        self.on_change = on_change or (lambda m: None)
        self.on_tick = on_tick or (lambda m: None)
        self.backend_options = dict(backend_options or {})
        self._cancel_checked = 0.0
        self.outputs: dict[str, dict[str, str]] = {}
        self.fingerprints: dict[str, str] = {}  # "stage.output" -> fingerprint
        self.manifest = self._open_manifest()
        self.previous = self._previous_run()
        self.lease = Lease(self.root, self.run_id)

    # -- manifest -------------------------------------------------------------
    def _open_manifest(self) -> RunManifest:
        if storage.exists(layout.manifest_uri(self.root, self.run_id)):
            manifest = RunManifest.load(self.root, self.run_id)
            if manifest.pipeline != self.spec.name:
                raise SpecError(f"run {self.run_id} belongs to pipeline "
                                f"{manifest.pipeline!r}, not {self.spec.name!r}")
            manifest.selected_stages = self.selected
            manifest.backend = self.backend.name
            spec = self.spec.model_dump(mode="json")
            changed = spec_changes(manifest.spec, spec)
            if changed:
                # `resume --set`: the run goes on with the new spec, and says so.
                manifest.changes.append(Change(t=time.time(), by="resume --set",
                                               fields=changed))
                manifest.spec = spec
            return manifest
        manifest = RunManifest.new(self.root, self.run_id, self.spec.name, self.backend.name,
                                   self.spec.model_dump(mode="json"), self.selected)
        manifest.backend_options = self.backend_options
        manifest.force = sorted(self.force)
        manifest.verify = self.verify
        return manifest

    def _previous_run(self) -> RunManifest | None:
        runs = [m for m in list_runs(self.root)[0]
                if m.pipeline == self.spec.name and m.run_id != self.run_id]
        return runs[-1] if runs else None

    def _event(self, stage: str, state: StageState, **fields: Any) -> None:
        self.lease.check()  # never write after another launcher took the run over
        self.manifest.event(stage, state, **fields)
        self.on_change(self.manifest)

    def _set_run_state(self, state: RunState, reason: str = "",
                       cause: Cause | None = None) -> None:
        self.manifest.set_state(state, reason, cause)
        self.on_change(self.manifest)

    # -- planning -------------------------------------------------------------
    def input_uris(self, stage: str) -> dict[str, str]:
        """Where each input of `stage` is: an upstream stage's output, or a spec URI."""
        return {name: uri if kind == "uri" else self.outputs[uri][dataset]
                for name, (kind, uri, dataset) in self.pipeline.wiring[stage].items()}

    def _input_fingerprints(self, stage: str) -> dict[str, str]:
        out = {}
        for name, (kind, src, dataset) in self.pipeline.wiring[stage].items():
            if kind == "stage":
                out[f"{src}.{dataset}"] = self.fingerprints[f"{src}.{dataset}"]
            else:
                out[name] = storage.committed(src).fingerprint
        return out

    def key_parts(self, stage: str) -> dict[str, Any]:
        definition = STAGES[stage]
        params = self.spec.params(stage).model_dump(mode="json")
        inputs = self._input_fingerprints(stage)
        for name in definition.source_params:
            if params.get(name):
                inputs[name] = cache.source_fingerprint(str(params[name]),
                                                        f"stages.{stage}.params.{name}")
        if definition.dated is not None and definition.dated(params):
            inputs["run_day"] = self.manifest.created_day.isoformat()
        image = self.spec.image(stage) if self.backend.name != "local" else \
            f"local-python{sys.version_info.major}.{sys.version_info.minor}"
        return {"stage": stage, "image": image, "code_version": cache.code_version(),
                "params": params, "shards": self.spec.stages[stage].shards, "inputs": inputs}

    def _explain(self, stage: str, parts: dict[str, Any]) -> str:
        old = self.previous.stage(stage).key_parts if self.previous is not None and \
            stage in self.previous.stages else None
        return cache.explain_change(old, parts)

    # -- running --------------------------------------------------------------
    def run(self) -> RunManifest:
        """Run every needed stage; raises StageFailed (manifest saved) on failure.

        The run is claimed first (one writer per run): a second launcher on a
        live run gets RunLocked naming the holder, and nothing is written.
        """
        # A launcher pod that replaced an evicted one may find its predecessor's lease
        # still live for up to a TTL: it waits that out rather than fail the run's Job.
        self.lease.acquire(wait=1.5 * self.lease.ttl if self.backend_options.get("in_cluster")
                           else 0.0)
        try:
            self.manifest = self._open_manifest()  # as the last holder left it
            self._forget_cancel_request()
            self.manifest.reason, self.manifest.cause = "", None
            self._set_run_state(RunState.RUNNING)
            needed = self.pipeline.needed(self.selected)
            for position, stage in enumerate(self.pipeline.order):
                following = next((s for s in self.pipeline.order[position + 1:]
                                  if s in needed), None)
                self.backend.expect_next(following, None if following is None else
                                         self.spec.stages[following].resources.cpu)
                if stage not in needed:
                    if not self.manifest.stage(stage).state.done:
                        self._event(stage, StageState.SKIPPED,
                                    reason="not selected with --stages")
                    continue
                self._run_stage(stage)
            self._set_run_state(RunState.SUCCEEDED)
            return self.manifest
        except (StageFailed, LeaseLost):
            raise  # the stage's end is recorded already; or the run is no longer ours
        except (KeyboardInterrupt, RunCancelled) as exc:
            self._mark_ended(RunState.CANCELLED, str(exc) or "cancelled (interrupted)",
                             Cause.CANCELLED)
            raise
        except BatchlineError as exc:
            # A run that fails before or between stages (a missing source, an
            # unknown column in a reused dataset, storage down) says so too.
            self._mark_ended(RunState.FAILED, str(exc),
                             Cause.BAD_INPUT if exc.exit_code == 2 else Cause.USER_ERROR)
            raise
        except OSError as exc:
            # A filesystem call that no storage wrapper caught: the same words.
            error = storage_error(exc, self.root)
            self._mark_ended(RunState.FAILED, str(error),
                             Cause.BAD_INPUT if error.exit_code == 2 else Cause.USER_ERROR)
            raise error from exc
        finally:
            self.backend.close()
            self._write_report(sys.exc_info()[1])
            self.lease.release()

    def _write_report(self, error: BaseException | None) -> None:
        """The run's report.html, best-effort: a report that fails to render is a warning,
        never the run's failure. Not when storage is what failed (every write would wait
        out its retries) nor when the run is no longer this launcher's."""
        if not self.manifest.state.ended or isinstance(
                error, StorageUnavailable | OSError | LeaseLost | LauncherDetached):
            return
        try:
            from batchline import report_html

            uri, _ = report_html.write(self.manifest)
            log.info("run %s: report %s", self.run_id, uri)
        except Exception as exc:  # any rendering bug must leave the run alone
            log.warning("run %s: could not write its report: %s", self.run_id, exc)

    def _mark_ended(self, state: RunState, reason: str, cause: Cause) -> None:
        # Storage may be what is failing, so the manifest may not be writable
        # either: try once, so `status` says failed rather than running when it can.
        try:
            self._set_run_state(state, reason.splitlines()[0] if reason else "", cause)
        except BatchlineError as exc:
            log.error("could not mark run %s %s in its manifest: %s", self.run_id, state, exc)

    # -- cancel requests and heartbeats ------------------------------------------
    def _forget_cancel_request(self) -> None:
        """A request left from an earlier launch is done with; one made before a
        submitted run's first launcher started still stands."""
        uri = layout.cancel_uri(self.root, self.run_id)
        if storage.exists(uri):
            if self.manifest.state is RunState.PENDING:
                raise RunCancelled("cancelled with `batchline cancel` before its launcher "
                                   "started")
            storage.delete_file(uri)

    def _tick(self, task: StageTask) -> None:
        """While a stage runs: keep the heartbeat fresh and honour `batchline cancel`."""
        self.manifest.beat()
        self.on_tick(self.manifest)
        now = time.monotonic()
        if now - self._cancel_checked >= CANCEL_CHECK_SECONDS:
            self._cancel_checked = now
            if storage.exists(layout.cancel_uri(self.root, self.run_id)):
                raise RunCancelled(f"stopped by `batchline cancel` while {task.stage} ran")

    def _run_stage(self, stage: str) -> None:
        parts = self.key_parts(stage)
        key = cache.key_of(parts)
        change = self._explain(stage, parts)
        outputs = STAGES[stage].outputs
        hit = None
        if stage not in self.force:
            verify = self.verify or STAGES[stage].verify_on_reuse
            hit = cache.lookup(self.root, self.run_id, stage, outputs, key, verify,
                               on_problem=lambda p: log.warning(
                                   "stage %s: not reusing a damaged commit: %s", stage, p))
        if hit is not None:
            if hit.run_id == self.run_id and STAGES[stage].settle is not None:
                # This run committed it, and its launcher may have died before settling
                # it (a fleet's promotions): settling is idempotent, so settle again.
                self._judge(self._task(stage, key, dict(hit.outputs), 1))
            where = "this run" if hit.run_id == self.run_id else f"run {hit.run_id}"
            self._finish(stage, StageState.REUSED, hit.outputs, hit.records, key, parts,
                         f"reused outputs committed by {where} (same key {key})")
            return
        if stage not in self.selected:
            raise SpecError(f"stage {stage!r} is not in --stages and has no committed outputs "
                            f"for its current inputs; add it to --stages")
        uris = {o: layout.output_uri(self.root, self.run_id, stage, o) for o in outputs}
        self._attempt(stage, key, parts, uris)
        records = {o: storage.committed(uri) for o, uri in uris.items()}
        why = "forced with --force" if stage in self.force else change
        self._finish(stage, StageState.SUCCEEDED, uris, records, key, parts, f"ran: {why}")
        cache.remember(self.root, stage, key, self.run_id, uris)

    def _finish(self, stage: str, state: StageState, outputs: dict[str, str],
                records: dict[str, storage.SuccessRecord], key: str, parts: dict[str, Any],
                reason: str) -> None:
        self.outputs[stage] = outputs
        for o, record in records.items():
            self.fingerprints[f"{stage}.{o}"] = record.fingerprint
        primary = records[STAGES[stage].outputs[0]]
        self._event(stage, state, cache_key=key, key_parts=parts, reason=reason,
                    outputs=outputs, rows=primary.rows or primary.metrics.get("rows"),
                    metrics=summary_metrics(stage, primary.metrics),
                    warnings=[w for r in records.values() for w in r.metrics.get("warnings", [])],
                    fingerprints={o: r.fingerprint for o, r in records.items()})
        log.info("stage %s: %s (%s)", stage, state.value, reason)

    def _task(self, stage: str, key: str, outputs: dict[str, str], attempt: int) -> StageTask:
        lineage = self._input_fingerprints(stage)
        task = stage_task(self.spec, self.root, self.run_id, stage, self.input_uris(stage),
                          outputs, key, attempt, lineage=lineage)
        # Every earlier attempt of this run has ended (one launcher, the lease
        # says so), so data prefixes older than now are leftovers to remove.
        return dataclasses.replace(task, stale_before=time.time())

    def _attempt(self, stage: str, key: str, parts: dict[str, Any],
                 outputs: dict[str, str]) -> None:
        retries = self.spec.stages[stage].retries
        failures = 0
        while True:
            attempt = self._adoptable_attempt(stage, key) or \
                self.manifest.stage(stage).next_attempt()
            task = self._task(stage, key, outputs, attempt)
            result = self._submit_and_wait(task)
            if result.ok:
                return
            if result.cause is not Cause.EVICTED:
                failures += 1
            retry = result.cause.retryable and failures <= retries and attempt < MAX_ATTEMPTS
            self._event(stage, StageState.RUNNING if retry else StageState.FAILED,
                        cause=result.cause, reason=result.advice(), error=result.message)
            if not retry:
                self._set_run_state(RunState.FAILED, f"stage {stage} failed ({result.cause})",
                                    result.cause)
                raise StageFailed(stage, result.cause,
                                  f"{result.advice()}\n{result.message}".rstrip(),
                                  result.exit_code, result.log_tail)
            log.warning("stage %s: attempt %d failed (%s); retrying", stage, attempt,
                        result.cause.value)

    def _submit_and_wait(self, task: StageTask) -> StageResult:
        """One attempt: the whole task, or its shards (each retried alone)."""
        if task.shard_count == 1 or self.backend.fans_out_shards:
            result = self._watch([task])[0]
        else:
            pending = [self._shard_task(task, i) for i in range(task.shard_count)
                       if not self._shard_committed(task, i)]
            results = self._watch(pending)
            failed = [r for r in results if not r.ok]
            result = failed[0] if failed else StageResult(task.stage, Cause.SUCCEEDED, 0)
        if result.ok and task.shard_count > 1:
            self._commit_shards(task)
        return self._judge(task) if result.ok else result

    def _judge(self, task: StageTask) -> StageResult:
        """A stage whose commit its definition refuses (a fleet with too many failed
        segments) fails as bad input; its commit stays, and a resume redoes only its
        failed parts. Then the definition settles the commit (a fleet's promotions,
        none when it failed)."""
        definition = STAGES[task.stage]
        succeeded = StageResult(task.stage, Cause.SUCCEEDED, 0)
        if definition.judge is None and definition.settle is None:
            return succeeded
        metrics = storage.committed(task.outputs[definition.outputs[0]]).metrics
        problem = definition.judge(metrics) if definition.judge else None
        if definition.settle is not None:
            definition.settle(task, metrics, problem)
        return succeeded if problem is None else \
            StageResult(task.stage, Cause.BAD_INPUT, 2, problem)

    def _shard_task(self, task: StageTask, index: int) -> StageTask:
        uri = layout.task_uri(self.root, self.run_id, task.stage, task.attempt, index)
        return dataclasses.replace(task.for_shard(index), task_uri=uri)

    def _shard_committed(self, task: StageTask, index: int) -> bool:
        """Whether this shard committed in an earlier attempt (same key, files intact,
        no failed parts to redo)."""
        shard = task.for_shard(index)
        uris = {name: shard.output_uri(name) for name in task.outputs}
        records = cache.reusable(uris, task.cache_key)
        return records is not None and not any(cache.partial(r) for r in records.values())

    def _watch(self, tasks: list[StageTask]) -> list[StageResult]:
        """Submit every task (recording each attempt as it starts), then wait for all."""
        handles: list[Handle] = []
        try:
            for task in tasks:
                storage.write_text(task.task_uri, task.to_json())
                self._start_attempt(task)
                with interrupts.held():  # a stop while starting waits for the handle
                    handles.append(self.backend.submit(task))
            results = [self.backend.wait(h, self._on_backend_event, self._tick)
                       for h in handles]
        except (KeyboardInterrupt, RunCancelled) as exc:
            for h in handles:
                self.backend.cancel(h)
            for h in handles:
                self._end_attempt(h.task, self.backend.wait(h))
            self._event(tasks[0].stage, StageState.CANCELLED, cause=Cause.CANCELLED,
                        reason=str(exc) or "cancelled (interrupted)")
            raise
        except LauncherDetached:
            for h in handles:  # left running for the next launcher, which adopts them
                self.backend.let_go(h)
            raise
        for result, task in zip(results, tasks, strict=True):
            self._end_attempt(task, result)
        return results

    def _adoptable_attempt(self, stage: str, key: str) -> int | None:
        """The attempt a launcher that let go of the run left running (its pod evicted),
        when this backend finds a task again by its name (a Kubernetes Job, a SageMaker
        job) and the work is the same: submitting it again adopts it, so the stage is
        watched to its end rather than started twice."""
        if not self.backend.adopts_by_name:
            return None
        record = self.manifest.stage(stage)
        if record.cache_key != key or record.state is not StageState.RUNNING:
            return None
        attempt = record.open_attempt()
        if attempt is not None:
            log.info("stage %s: adopting attempt %d, left running by the last launcher",
                     stage, attempt)
        return attempt

    def _start_attempt(self, task: StageTask) -> None:
        entry = self.manifest.stage(task.stage)
        # One submit of a fanning-out backend (an Indexed Job) runs every shard.
        shard = None if self.backend.fans_out_shards else task.shard
        if not any(a.number == task.attempt and a.shard == shard and a.ended_at is None
                   for a in entry.attempts):  # else: adopted, still running
            entry.attempts.append(Attempt(number=task.attempt, shard=shard,
                                          started_at=time.time()))
        self._event(task.stage, StageState.RUNNING, attempt=task.attempt, cache_key=task.cache_key,
                    phase="submitted")

    def _end_attempt(self, task: StageTask, result: StageResult) -> None:
        for record in self.manifest.stage(task.stage).attempts:
            if record.number == task.attempt and record.shard in (task.shard, None):
                record.ended_at = time.time()
                record.cause = result.cause
                record.exit_code = result.exit_code
                record.message = result.message
                record.backend_ref = result.backend_ref
                record.logs = list(result.logs)
        self.manifest.save()

    def _on_backend_event(self, task: StageTask, phase: str) -> None:
        if self.manifest.stage(task.stage).phase != phase:
            self._event(task.stage, StageState.RUNNING, phase=phase)

    def _commit_shards(self, task: StageTask) -> None:
        merge = STAGES[task.stage].merge_shards
        for output, uri in task.outputs.items():
            shards = [task.for_shard(i).output_uri(output) for i in range(task.shard_count)]
            metrics = merge([storage.committed(s).metrics for s in shards]) if merge else None
            storage.commit_union(uri, shards, task.stamp(), metrics)


def summary_metrics(stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics the stage's definition asks the summary to show (the rest stay in
    `_SUCCESS.json`)."""
    return {k: metrics[k] for k in STAGES[stage].summary if k in metrics}


def stage_task(spec: PipelineSpec, root: str, run_id: str, stage: str, inputs: dict[str, str],
               outputs: dict[str, str], cache_key: str, attempt: int = 1,
               lineage: dict[str, str] | None = None) -> StageTask:
    """The StageTask for one attempt of `stage`, from the spec and resolved URIs."""
    stage_spec = spec.stages[stage]
    res = stage_spec.resources
    params = spec.params(stage).model_dump(mode="json")
    placement: dict[str, Any] = {
        "node_selector": dict(stage_spec.node_selector),
        "tolerations": [t.model_dump(exclude_none=True) for t in stage_spec.tolerations],
        "pipeline": spec.name,
    }
    sources = [str(params[p]) for p in STAGES[stage].source_params if params.get(p)]
    return StageTask(
        run_id=run_id, stage=stage, inputs=inputs, outputs=outputs, params=params,
        storage_root=root, task_uri=layout.task_uri(root, run_id, stage, attempt),
        cache_key=cache_key, image=spec.image(stage), attempt=attempt,
        shard_count=stage_spec.shards,
        resources=Resources(res.cpu, res.memory, res.timeout_seconds), placement=placement,
        code_version=cache.code_version(), lineage=dict(lineage or {}), sources=sources)


def spec_changes(old: Any, new: Any, path: str = "") -> dict[str, Any]:
    """The fields of `new` that differ from `old`, by dotted path (new values)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, Any] = {}
        for key in sorted(set(old) | set(new), key=str):
            out.update(spec_changes(old.get(key), new.get(key), f"{path}.{key}" if path else key))
        return out
    return {} if old == new else {path: new}


def storage_error(exc: OSError, root: str) -> BatchlineError:
    """An OSError from storage as batchline's error: misconfigured (2) or unavailable."""
    uri = exc.filename or root
    return misconfiguration(exc, "use", uri) or StorageUnavailable(describe(exc, "use", uri))


def resume_hint(run_id: str, root: str) -> str:
    return f"resume with: batchline resume {run_id} --storage {root}"
