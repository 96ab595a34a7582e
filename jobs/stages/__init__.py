"""Callable stages for `map_batches`, each a thin adapter over the library: `front` (read, decode,
detect, align: every job), `models` (restore, measure, paste), and each job's own (`restore`,
`audit`, `pairs`). Batches hold one row per input image; its faces are in that row, raw faces as
one (n, 512, 512, 3) array (batches.Block)."""
