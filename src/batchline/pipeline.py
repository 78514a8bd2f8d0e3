"""The pipeline graph: which stages a spec uses, in the order their datasets imply.

A spec lists the stages it needs; each stage reads datasets by name and
writes others (see `batchline.stages`). A dataset is produced by a stage of
the same spec or supplied from outside (`stages.<name>.inputs.<input>: URI`
of a committed dataset, e.g. a model trained by an earlier run). The order is
a topological sort of that graph, ties broken by the catalog's order, so it
never depends on how the spec happens to list its stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from batchline.stages import STAGES, producers


@dataclass(frozen=True)
class Pipeline:
    """The stages of one spec in run order, and where each of their inputs comes from."""

    order: tuple[str, ...]
    # stage -> input name -> ("stage", producing stage, dataset) or ("uri", uri, dataset)
    wiring: Mapping[str, Mapping[str, tuple[str, str, str]]]

    def upstream(self, stage: str) -> list[str]:
        """The stages whose outputs `stage` reads directly."""
        return sorted({src for kind, src, _ in self.wiring[stage].values() if kind == "stage"},
                      key=self.order.index)

    def needed(self, selected: list[str]) -> list[str]:
        """The selected stages and everything upstream of them, in run order."""
        needed = set(selected)
        for stage in reversed(self.order):
            if stage in needed:
                needed.update(self.upstream(stage))
        return [s for s in self.order if s in needed]


def build(stages: list[str], external: Mapping[str, Mapping[str, str]]) -> Pipeline:
    """The graph of `stages` (names from the catalog); errors name the spec field to fix.

    `external` maps stage -> input name -> URI of a committed dataset that the
    spec supplies instead of a producing stage. Raises ValueError with every
    problem (a missing producer, an unknown input name, a cycle).
    """
    made_by = {d: s for d, s in producers().items() if s in stages}
    problems: list[str] = []
    wiring: dict[str, dict[str, tuple[str, str, str]]] = {}
    for name in stages:
        definition = STAGES[name]
        wiring[name] = {}
        for input_name in external.get(name, {}):
            if input_name not in definition.inputs:
                problems.append(f"stages.{name}.inputs.{input_name}: stage {name!r} has no "
                                f"input {input_name!r}; its inputs: "
                                f"{', '.join(definition.inputs) or 'none'}")
        for input_name, dataset in definition.inputs.items():
            uri = external.get(name, {}).get(input_name)
            if uri:
                wiring[name][input_name] = ("uri", uri, dataset)
            elif dataset in made_by:
                wiring[name][input_name] = ("stage", made_by[dataset], dataset)
            else:
                writer = producers().get(dataset, "")
                problems.append(
                    f"stages.{name}: reads dataset {dataset!r}, which no stage of this spec "
                    f"writes; add stages.{writer} to the spec, or set "
                    f"stages.{name}.inputs.{input_name} to the URI of a committed dataset")
    if problems:
        raise ValueError("\n".join(problems))
    return Pipeline(_topological(stages, wiring), wiring)


def _topological(stages: list[str], wiring: Mapping[str, Mapping[str, tuple[str, str, str]]]
                 ) -> tuple[str, ...]:
    catalog = list(STAGES)
    pending = sorted(stages, key=catalog.index)
    order: list[str] = []
    while pending:
        ready = [s for s in pending if all(kind != "stage" or src in order
                                           for kind, src, _ in wiring[s].values())]
        if not ready:
            raise ValueError(f"stages {pending} read each other's outputs in a cycle")
        order.append(ready[0])
        pending.remove(ready[0])
    return tuple(order)

