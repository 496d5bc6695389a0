"""The mapping between processing pixels and level-0 slide pixels."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Transform:
    """processing px -> level-0 px: ``level0 = proc * scale + offset`` per axis.

    Coordinates are continuous: pixel (i, j) spans [i, i + 1) on both grids, so a
    point, a pixel corner or a box maps with the same formula. Works on scalars
    and numpy arrays alike.
    """

    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    def to_level0(self, x: Any, y: Any) -> tuple[Any, Any]:
        return x * self.scale_x + self.offset_x, y * self.scale_y + self.offset_y

    def from_level0(self, x: Any, y: Any) -> tuple[Any, Any]:
        return (x - self.offset_x) / self.scale_x, (y - self.offset_y) / self.scale_y

    def coarsened(self, factor: float) -> Transform:
        """The same origin with pixels `factor` times larger (e.g. a mask grid)."""
        return Transform(self.scale_x * factor, self.scale_y * factor, self.offset_x, self.offset_y)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Transform:
        return cls(**{k: float(v) for k, v in d.items()})
