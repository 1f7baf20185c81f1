"""Count reconciliation by record id: every input record is routed, dead-lettered or filtered, exactly once.

An input record's id is its event id when it decodes, else ``<partition>:<offset>`` of the raw topic.
Routed and filtered records name their event id; dead letters name the raw record they came from
(topic/partition/offset). A record seen again in the same place (a redelivery after a restart) is a
duplicate, counted apart; a record with no fate is lost; an output naming no input is foreign.
"""

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class InputRecord:
    partition: int
    offset: int
    event_id: str | None  # None when the bytes do not decode

    @property
    def record_id(self) -> str:
        return self.event_id if self.event_id is not None else f"{self.partition}:{self.offset}"


@dataclass
class Reconciliation:
    records_in: int
    routed: int
    dead_lettered: int
    filtered: int
    duplicates: Counter = field(default_factory=Counter)  # where: fates beyond the input's copies of a record
    lost: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        accounted = self.routed + self.dead_lettered + self.filtered
        return not (self.lost or self.foreign) and accounted == self.records_in

    def line(self) -> str:
        dup = sum(self.duplicates.values())
        verdict = "OK" if self.ok else "MISMATCH"
        text = (
            f"reconciliation: in {self.records_in} = routed {self.routed} + dead-lettered {self.dead_lettered}"
            f" + filtered {self.filtered} -> {verdict}; lost {len(self.lost)}; duplicates {dup}"
        )
        if dup:
            text += " (" + ", ".join(f"{name} {n}" for name, n in sorted(self.duplicates.items())) + ")"
        for label, ids in (("lost", self.lost), ("foreign", self.foreign)):
            if ids:
                text += f"; {label}: {', '.join(sorted(ids)[:5])}{' ...' if len(ids) > 5 else ''}"
        return text


def reconcile(
    inputs: Iterable[InputRecord],
    routed: Mapping[str, Iterable[str]],
    filtered: Iterable[str],
    dead_letters: Iterable[tuple[int, int]],
) -> Reconciliation:
    """``routed``: route -> event ids written; ``filtered``: event ids; ``dead_letters``: (partition, offset).

    Counts are multisets: an event id published twice must have two fates. An event in several routes
    has one fate (its copies per route count once each); fates beyond the input's copies are duplicates.
    """
    copies: Counter = Counter()
    by_position: dict[tuple[int, int], str] = {}
    for record in inputs:
        copies[record.record_id] += 1
        by_position[(record.partition, record.offset)] = record.record_id
    routed_n: Counter = Counter()
    for values in routed.values():
        for event_id, n in Counter(values).items():
            routed_n[event_id] = max(routed_n[event_id], n)
    filtered_n = Counter(filtered)
    dead_n: Counter = Counter()
    foreign = []
    for partition, offset in dead_letters:
        record_id = by_position.get((partition, offset))
        if record_id is None:
            foreign.append(f"dead letter {partition}:{offset}")
        else:
            dead_n[record_id] += 1
    foreign += [f"event {i}" for i in (set(routed_n) | set(filtered_n)) - set(copies)]
    counted = Counter()
    duplicates: Counter = Counter()
    lost = []
    for record_id, n_in in copies.items():
        left = n_in
        for name, fates in (("routed", routed_n), ("dead_letters", dead_n), ("filtered", filtered_n)):
            taken = min(left, fates[record_id])
            counted[name] += taken
            left -= taken
            if fates[record_id] > taken:
                duplicates[name] += fates[record_id] - taken
        if left:
            lost.append(record_id)
    return Reconciliation(
        records_in=sum(copies.values()),
        routed=counted["routed"],
        dead_lettered=counted["dead_letters"],
        filtered=counted["filtered"],
        duplicates=duplicates,
        lost=sorted(lost),
        foreign=sorted(foreign),
    )
