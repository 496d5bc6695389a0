"""The processing defaults every entry point shares: the cohort file, `inspect`, `tile` and the model."""

PROCESSING_MPP = 0.5  # µm/px, the resolution Cerberus was trained at
CHUNK = 2016  # output px per chunk side (14 cells)
TILE = 1008  # output px per forward pass in tile mode (7 cells)
BATCH_SIZE = 8  # forward passes per batch
