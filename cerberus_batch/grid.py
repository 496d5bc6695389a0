"""The output grid every stage shares.

Outputs are laid on cells of CELL processing pixels starting at the slide's
processing-resolution pixel (0, 0) — the reference's patch output grid. A model
sees CONTEXT extra input pixels on every side of the output it predicts
(448-px patches keep their centre 144 px: (448 - 144) / 2 = 152).
"""

CELL = 144
CONTEXT = 152


def whole_cells(shape: tuple[int, ...]) -> tuple[int, int]:
    """(h, w) of an image of `shape` padded up to whole cells: the extent of its output grid."""
    return -(-shape[0] // CELL) * CELL, -(-shape[1] // CELL) * CELL
