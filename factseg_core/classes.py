"""The iSAID class table: the single source of truth for class ids, names and mask colours.

Channel order is the reference code's colour list order (``data/isaid.py`` of Junjue-Wang/FactSeg), so
channel *k* of the released ``factseg50.pth`` means the class whose colour is listed *k*-th there.

Names come from the official iSAID devkit's label table, not from the reference code: the reference
code names colour (0, 191, 127) "storage_tank" and (0, 63, 63) "roundabout", but the devkit (and the
masks themselves) say (0, 191, 127) is a roundabout and (0, 63, 63) a storage tank. The colour is what
the network was trained on, so the colour decides: channel 2 is ``roundabout``, channel 12 is
``storage_tank``. A map that labelled roundabouts as storage tanks would mislead analysts.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from factseg_contract.class_table import check_class_table


@dataclass(frozen=True)
class ClassInfo:
    """One semantic class: its id (output channel), display name and RGB colour."""

    id: int
    name: str
    color: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "color": list(self.color)}


ISAID_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "background", (0, 0, 0)),
    ClassInfo(1, "ship", (0, 0, 63)),
    ClassInfo(2, "roundabout", (0, 191, 127)),
    ClassInfo(3, "baseball_diamond", (0, 63, 0)),
    ClassInfo(4, "tennis_court", (0, 63, 127)),
    ClassInfo(5, "basketball_court", (0, 63, 191)),
    ClassInfo(6, "ground_track_field", (0, 63, 255)),
    ClassInfo(7, "bridge", (0, 127, 63)),
    ClassInfo(8, "large_vehicle", (0, 127, 127)),
    ClassInfo(9, "small_vehicle", (0, 0, 127)),
    ClassInfo(10, "helicopter", (0, 0, 191)),
    ClassInfo(11, "swimming_pool", (0, 0, 255)),
    ClassInfo(12, "storage_tank", (0, 63, 63)),
    ClassInfo(13, "soccer_ball_field", (0, 127, 191)),
    ClassInfo(14, "plane", (0, 127, 255)),
    ClassInfo(15, "harbor", (0, 100, 155)),
)

ISAID_NUM_CLASSES: int = len(ISAID_CLASSES)


def classes_to_dicts(classes: Iterable[ClassInfo]) -> list[dict]:
    """Plain JSON-able form, as stored in checkpoints and sent in the worker's ``info`` reply."""
    return [c.to_dict() for c in classes]


def classes_from_dicts(items: Sequence[dict], where: str = "class table:") -> tuple[ClassInfo, ...]:
    """Inverse of :func:`classes_to_dicts`, checked by the shared contract's rule (ClassTableError, a ValueError)."""
    return tuple(ClassInfo(c["id"], c["name"], tuple(c["color"])) for c in check_class_table(items, where))


__all__ = ["ClassInfo", "ISAID_CLASSES", "ISAID_NUM_CLASSES", "classes_to_dicts", "classes_from_dicts"]
