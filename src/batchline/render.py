"""`batchline render`: one run's Jobs as YAML for people who submit with kubectl,
or (`--backend sagemaker`) its SageMaker requests and IAM policies as JSON.

Each Job carries its task inline (no launcher writes task files) and waits
for its inputs to be committed, so `kubectl apply -f` of all four starts the
whole run: features begins when ingest has committed, and so on. Such runs
have no cache keys; `batchline run --backend kubernetes` is the way to get
caching, retries by cause and a manifest.
"""

from __future__ import annotations

import json
from typing import Any

from batchline import layout
from batchline.backends.kubernetes import Options
from batchline.backends.kubernetes_job import job_manifest
from batchline.backends.sagemaker_job import SageMakerOptions
from batchline.launcher import stage_task
from batchline.spec import PipelineSpec
from batchline.stages import STAGES
from batchline.task import StageTask


def tasks_for_run(spec: PipelineSpec, run_id: str, root: str) -> list[StageTask]:
    """The first attempt of every stage of a run, with URIs from the layout."""
    tasks = []
    for stage in spec.pipeline.order:
        inputs = {name: uri if kind == "uri" else layout.output_uri(root, run_id, uri, dataset)
                  for name, (kind, uri, dataset) in spec.pipeline.wiring[stage].items()}
        outputs = {o: layout.output_uri(root, run_id, stage, o) for o in STAGES[stage].outputs}
        tasks.append(stage_task(spec, root, run_id, stage, inputs, outputs, cache_key=""))
    return tasks


def upstream_seconds(spec: PipelineSpec) -> dict[str, int]:
    """How long each stage may have to wait for its inputs: the longest chain of
    upstream timeouts (ingest waits 0, score waits ingest + features + train)."""
    waits: dict[str, int] = {}
    for stage in spec.pipeline.order:  # run order: every input stage is already known
        waits[stage] = max((waits[s] + spec.stages[s].resources.timeout_seconds
                            for s in spec.pipeline.upstream(stage)), default=0)
    return waits


def render_run(spec: PipelineSpec, run_id: str, root: str,
               options: Options | None = None) -> list[dict[str, Any]]:
    """Job manifests for every stage of one run, in pipeline order."""
    k8s = options or Options(**spec.backend_options("kubernetes"))
    waits = upstream_seconds(spec)
    jobs = []
    for task in tasks_for_run(spec, run_id, root):
        job = job_manifest(task, namespace=k8s.namespace, service_account=k8s.service_account,
                           ttl_seconds_after_finished=k8s.ttl_seconds_after_finished,
                           backoff_limit=spec.stages[task.stage].retries,
                           env_from_secret=k8s.secret, inline_task=True,
                           wait_inputs_seconds=waits[task.stage])
        # All Jobs are applied at once and a Job's deadline runs from its
        # start, so the waiting for upstream stages must not eat into the
        # stage's own timeout.
        job["spec"]["activeDeadlineSeconds"] = waits[task.stage] + task.resources.timeout_seconds
        jobs.append(job)
    return jobs


def render_sagemaker(spec: PipelineSpec, run_id: str, root: str,
                     options: SageMakerOptions) -> dict[str, Any]:
    """Every stage's Create*Job request, in run order, and the two IAM policies.

    Each request is exactly what `aws sagemaker create-<kind>-job
    --cli-input-json` takes. The jobs read their task from storage, so the
    tasks are printed too, each with the URI to upload it to; create the jobs
    in order, each when the one before has Completed (a rendered run has no
    launcher to wait for them, to cache or to retry).
    """
    from batchline.backends.sagemaker_iam import (
        execution_role_policy,
        launcher_policy,
        trust_policy,
    )
    from batchline.backends.sagemaker_job import job_request

    tasks = tasks_for_run(spec, run_id, root)
    region = options.region or "us-east-1"
    jobs = []
    for task in tasks:
        kind, request = job_request(task, options)
        jobs.append({"stage": task.stage, "api": f"Create{kind.title()}Job",
                     "cli": f"aws sagemaker create-{kind}-job --cli-input-json "
                            f"file://{task.stage}.json",
                     "task_uri": task.task_uri, "task": json.loads(task.to_json()),
                     "request": request})
    sources = sorted({s for t in tasks for s in t.sources})
    images = [t.image for t in tasks]
    return {"run_id": run_id, "jobs": jobs, "policies": {
        "execution_role": execution_role_policy(root, sources, images, options, region),
        "execution_role_trust": trust_policy(),
        "launcher": launcher_policy(root, job_prefix(spec), options, region)}}


def job_prefix(spec: PipelineSpec) -> str:
    """What every job name of this pipeline starts with (run ids start with it)."""
    return f"{spec.name[:12].rstrip('-')}-"
