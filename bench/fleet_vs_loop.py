"""A fleet's train stage against a plain loop that trains the same models in one process.

The fleet run (`batchline run jobs/readmission_fleet.yaml`) trains the
global model and one model per large-enough segment across its worker
processes, and puts each through the registry's promotion gate. The baseline
here is what a data scientist would write: one Python process that reads the
same committed features table and trains the same models one after another,
through the very same training function, with LightGBM using every core. No
registry, no gate, no commits: only the models.

Prints one JSON line: the fleet train stage's wall time (from the run's
manifest), the loop's wall time and peak memory, and the model count.
Usage: python bench/fleet_vs_loop.py STORAGE_ROOT RUN_ID [--spec jobs/readmission_fleet.yaml]
Run it right after the fleet run, on the same machine, so both see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as batchline's stages run LightGBM

from batchline import cpu, fleet, storage
from batchline.manifest import RunManifest
from batchline.params import SEGMENT_COLUMN, TrainParams
from batchline.spec import load_spec
from batchline.stages import fleet_train
from batchline.stages import train as single

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root")
    parser.add_argument("run_id")
    parser.add_argument("--spec", default=str(HERE.parent / "jobs/readmission_fleet.yaml"))
    parser.add_argument("--threads", type=int, default=0,
                        help="LightGBM threads per model (default: every core, as a loop "
                        "written without thought for it would)")
    args = parser.parse_args()

    manifest = RunManifest.load(args.root, args.run_id)
    train = manifest.stages["train"]
    attempts = [a for a in train.attempts if a.ended_at is not None]
    fleet_seconds = max(a.ended_at or 0.0 for a in attempts) - min(a.started_at for a in attempts)

    spec = load_spec(args.spec)
    params = spec.params("train")
    assert isinstance(params, TrainParams) and params.segments is not None
    cores = args.threads or cpu.budget().cores
    base = params.model_copy(update={"exclude": [*params.exclude, SEGMENT_COLUMN],
                                     "segments": None, "promote": None,
                                     "num_threads": cores})
    dataset = storage.open_dataset(manifest.stages["features"].outputs["features"])
    started = time.monotonic()
    plan = fleet.plan(fleet_train.segment_counts(dataset, params.label), params.segments.min_rows)
    trained = failed = 0
    for key in plan.work():
        value = plan.values.get(key)
        rows = dataset if key == fleet.GLOBAL else fleet_train.segment_rows(dataset, value)
        try:
            fleet_train.train_segment(rows, value, base, single.train)
            trained += 1
        except Exception:  # a segment the fleet also lists as failed (one label class)
            failed += 1
    loop_seconds = time.monotonic() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"models": trained, "failed": failed, "fleet_train_seconds":
                      round(fleet_seconds, 1), "loop_seconds": round(loop_seconds, 1),
                      "speedup": round(loop_seconds / fleet_seconds, 2),
                      "loop_peak_mb": round(peak_mb), "threads": cores,
                      "load_average": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
