"""The launcher owns policy: plan, cache, retries by cause, shard fan-out, resume.

It walks the stages in order. For each one it computes the cache key; if a
commit with that key exists (in this run, for a resume, or in any earlier run)
the stage is reused and nothing is launched. Otherwise it writes the task to
storage, submits it to the backend, waits, and retries by cause. Every state
change is written to the run manifest before anything else happens.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from typing import Any

from batchline import STAGES, cache, layout, storage
from batchline.backends.base import Backend, Handle
from batchline.errors import SpecError, StageFailed
from batchline.manifest import (
    CANCELLED,
    DONE,
    FAILED,
    REUSED,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    RunManifest,
    list_runs,
)
from batchline.spec import PipelineSpec
from batchline.task import Cause, Resources, StageResult, StageTask

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 10  # evictions do not use up retries, but never loop forever

OnChange = Callable[[RunManifest], None]


def needed_stages(selected: list[str]) -> list[str]:
    """The selected stages and everything upstream of them, in pipeline order."""
    needed = set(selected)
    for stage in reversed(STAGES):
        if stage in needed:
            needed.update(s for s, _ in layout.INPUTS[stage].values())
    return [s for s in STAGES if s in needed]


class Launcher:
    """Runs one pipeline run (new or resumed) on one backend."""

    def __init__(self, spec: PipelineSpec, root: str, backend: Backend, run_id: str,
                 stages: list[str] | None = None, on_change: OnChange | None = None) -> None:
        unknown = [s for s in stages or [] if s not in STAGES]
        if unknown:
            raise SpecError(f"--stages: unknown stages {unknown}; known: {', '.join(STAGES)}")
        self.spec = spec
        self.root = root.rstrip("/")
        self.backend = backend
        self.run_id = layout.check_run_id(run_id)
        self.selected = [s for s in STAGES if s in (stages or STAGES)]
        self.on_change = on_change or (lambda m: None)
        self.outputs: dict[str, dict[str, str]] = {}
        self.fingerprints: dict[str, str] = {}
        self.manifest = self._open_manifest()
        self.previous = self._previous_run()

    # -- manifest -------------------------------------------------------------
    def _open_manifest(self) -> RunManifest:
        if storage.exists(layout.manifest_uri(self.root, self.run_id)):
            manifest = RunManifest.load(self.root, self.run_id)
            if manifest.data.get("pipeline") != self.spec.name:
                raise SpecError(f"run {self.run_id} belongs to pipeline "
                                f"{manifest.data.get('pipeline')!r}, not {self.spec.name!r}")
            manifest.data["selected_stages"] = self.selected
            return manifest
        return RunManifest.new(self.run_id, self.spec.name, self.root, self.backend.name,
                               self.spec.model_dump(mode="json"), self.selected)

    def _previous_run(self) -> RunManifest | None:
        runs = [m for m in list_runs(self.root)
                if m.data.get("pipeline") == self.spec.name and m.run_id != self.run_id]
        return runs[-1] if runs else None

    def _event(self, stage: str, state: str, **fields: Any) -> None:
        self.manifest.event(stage, state, **fields)
        self.on_change(self.manifest)

    # -- planning -------------------------------------------------------------
    def key_parts(self, stage: str) -> dict[str, Any]:
        stage_spec = self.spec.stages[stage]
        params = self.spec.params(stage).model_dump(mode="json")
        if stage == "ingest":
            inputs = {"source": cache.source_fingerprint(params["source"])}
        else:
            inputs = {f"{s}.{o}": self.fingerprints[f"{s}.{o}"]
                      for s, o in layout.INPUTS[stage].values()}
        image = self.spec.image(stage) if self.backend.name != "local" else \
            f"local-python{sys.version_info.major}.{sys.version_info.minor}"
        return {"stage": stage, "image": image, "code_version": cache.code_version(),
                "params": params, "shards": stage_spec.shards, "inputs": inputs}

    def _explain(self, stage: str, parts: dict[str, Any]) -> str:
        old = None
        if self.previous is not None:
            old = self.previous.data["stages"].get(stage, {}).get("key_parts")
        return cache.explain_change(old, parts)

    # -- running --------------------------------------------------------------
    def run(self) -> RunManifest:
        """Run every needed stage; raises StageFailed (manifest saved) on failure."""
        self.manifest.set_state(RUNNING)
        self.on_change(self.manifest)
        for stage in STAGES:
            if stage not in needed_stages(self.selected):
                if self.manifest.stage(stage)["state"] not in DONE:
                    self._event(stage, SKIPPED, reason="not selected with --stages")
                continue
            self._run_stage(stage)
        self.manifest.set_state(SUCCEEDED)
        self.on_change(self.manifest)
        return self.manifest

    def _run_stage(self, stage: str) -> None:
        parts = self.key_parts(stage)
        key = cache.key_of(parts)
        change = self._explain(stage, parts)
        hit = cache.lookup(self.root, self.run_id, stage, key)
        if hit is not None:
            where = "this run" if hit["run_id"] == self.run_id else f"run {hit['run_id']}"
            self._finish(stage, REUSED, hit["outputs"], key, parts,
                         f"reused outputs committed by {where} (same key {key})")
            return
        if stage not in self.selected:
            raise SpecError(f"stage {stage!r} is not in --stages and has no committed outputs "
                            f"for its current inputs; add it to --stages")
        outputs = {o: layout.output_uri(self.root, self.run_id, stage, o)
                   for o in layout.OUTPUTS[stage]}
        self._attempt(stage, key, parts, outputs)
        self._finish(stage, SUCCEEDED, outputs, key, parts, f"ran: {change}")
        cache.remember(self.root, stage, key, self.run_id, outputs)

    def _finish(self, stage: str, state: str, outputs: dict[str, str], key: str,
                parts: dict[str, Any], reason: str) -> None:
        self.outputs[stage] = outputs
        records = {o: storage.committed(uri) for o, uri in outputs.items()}
        for o, record in records.items():
            self.fingerprints[f"{stage}.{o}"] = record.fingerprint
        primary = records[layout.OUTPUTS[stage][0]]
        rows = primary.rows or primary.metrics.get("rows_fit", 0) + primary.metrics.get(
            "rows_valid", 0)
        self._event(stage, state, cache_key=key, key_parts=parts, reason=reason,
                    outputs=outputs, rows=rows, metrics=_headline(primary.metrics),
                    fingerprints={o: r.fingerprint for o, r in records.items()})
        log.info("stage %s: %s (%s)", stage, state, reason)

    def _task(self, stage: str, key: str, outputs: dict[str, str], attempt: int) -> StageTask:
        inputs = {name: self.outputs[s][o] for name, (s, o) in layout.INPUTS[stage].items()}
        return stage_task(self.spec, self.root, self.run_id, stage, inputs, outputs, key,
                          attempt)

    def _attempt(self, stage: str, key: str, parts: dict[str, Any],
                 outputs: dict[str, str]) -> None:
        retries = self.spec.stages[stage].retries
        failures = 0
        while True:
            attempt = len(self.manifest.stage(stage)["attempts"]) + 1
            task = self._task(stage, key, outputs, attempt)
            self._event(stage, RUNNING, attempt=attempt, cache_key=key)
            result = self._submit_and_wait(task)
            self.manifest.stage(stage)["attempts"].append({
                "attempt": attempt, "cause": result.cause.value, "exit_code": result.exit_code,
                "message": result.message, "backend_ref": result.backend_ref,
                "log": layout.log_uri(self.root, self.run_id, stage, attempt)})
            if result.ok:
                return
            if result.cause is not Cause.EVICTED:
                failures += 1
            retry = result.cause.retryable and failures <= retries and attempt < MAX_ATTEMPTS
            self._event(stage, RUNNING if retry else FAILED, cause=result.cause.value,
                        reason=result.advice(), error=result.message)
            if not retry:
                self.manifest.set_state(FAILED)
                self.on_change(self.manifest)
                raise StageFailed(stage, result.cause,
                                  f"{result.advice()}\n{result.message}".rstrip(),
                                  result.exit_code, result.log_tail)
            log.warning("stage %s: attempt %d failed (%s); retrying", stage, attempt,
                        result.cause.value)

    def _submit_and_wait(self, task: StageTask) -> StageResult:
        """One attempt: the whole task, or its shards (each retried alone)."""
        if task.shard_count == 1 or getattr(self.backend, "fans_out_shards", False):
            storage.write_text(task.task_uri, task.to_json())
            result = self._watch([self.backend.submit(task)])[0]
            if result.ok and task.shard_count > 1:
                self._commit_shards(task)
            return result
        pending = []
        for index in range(task.shard_count):
            shard_uri = layout.shard_uri(task.outputs[layout.OUTPUTS[task.stage][0]], index)
            record = storage.read_success(shard_uri)
            if record is not None and record.meta.get("cache_key") == task.cache_key:
                continue  # this shard committed in an earlier attempt
            shard = dataclasses.replace(task.for_shard(index), task_uri=layout.task_uri(
                self.root, self.run_id, task.stage, task.attempt, index))
            storage.write_text(shard.task_uri, shard.to_json())
            pending.append(shard)
        results = self._watch([self.backend.submit(t) for t in pending])
        failed = [r for r in results if not r.ok]
        if failed:
            return failed[0]
        self._commit_shards(task)
        return StageResult(task.stage, Cause.SUCCEEDED, 0)

    def _watch(self, handles: list[Handle]) -> list[StageResult]:
        try:
            return [self.backend.wait(h, self._on_backend_event) for h in handles]
        except KeyboardInterrupt:
            for h in handles:
                self.backend.cancel(h)
            self._event(handles[0].task.stage, CANCELLED, reason="cancelled by the user")
            self.manifest.set_state(CANCELLED)
            raise

    def _on_backend_event(self, task: StageTask, phase: str) -> None:
        if self.manifest.stage(task.stage).get("phase") != phase:
            self._event(task.stage, RUNNING, phase=phase)

    def _commit_shards(self, task: StageTask) -> None:
        for output, uri in task.outputs.items():
            shards = [layout.shard_uri(uri, i) for i in range(task.shard_count)]
            storage.commit_union(uri, shards, meta={"run_id": task.run_id, "stage": task.stage,
                                                    "cache_key": task.cache_key,
                                                    "output": output})


def stage_task(spec: PipelineSpec, root: str, run_id: str, stage: str, inputs: dict[str, str],
               outputs: dict[str, str], cache_key: str, attempt: int = 1) -> StageTask:
    """The StageTask for one attempt of `stage`, from the spec and resolved URIs."""
    stage_spec = spec.stages[stage]
    res = stage_spec.resources
    placement: dict[str, Any] = {
        "node_selector": dict(stage_spec.node_selector),
        "tolerations": [t.model_dump(exclude_none=True) for t in stage_spec.tolerations],
        "pipeline": spec.name,
    }
    return StageTask(
        run_id=run_id, stage=stage, inputs=inputs, outputs=outputs,
        params=spec.params(stage).model_dump(mode="json"), storage_root=root,
        task_uri=layout.task_uri(root, run_id, stage, attempt), cache_key=cache_key,
        image=spec.image(stage), attempt=attempt, shard_count=stage_spec.shards,
        resources=Resources(res.cpu, res.memory, res.timeout_seconds), placement=placement)


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics worth showing in a summary (the rest stay in _SUCCESS.json)."""
    keep = ("auc_valid", "logloss_valid", "best_iteration", "rows_bad", "rows_in",
            "model_version")
    out = {k: metrics[k] for k in keep if k in metrics}
    best = metrics.get("source_meta", {}).get("best_auc_recent")
    if best is not None:
        out["generator_best_auc"] = best
    ece = metrics.get("calibration_valid", {}).get("ece")
    if ece is not None:
        out["calibration_ece"] = ece
    return out


def resume_hint(run_id: str, root: str) -> str:
    return f"resume with: batchline resume {run_id} --storage {root}"


