"""Speaker-mix timeline for `inference_main.py -usm` (upstream's template, read as data).

Each speaker id maps to a list of segments `[start, end, value_at_start,
value_at_end]`. Times are fractions of the whole song (0 to 1); the first
segment starts at 0, the last ends at 1, and each segment starts where the
previous one ended. Within a segment the speaker's weight moves linearly from
the first value to the second. Every speaker of the model must be listed; give
an unused one `[[0.0, 1.0, 0.0, 0.0]]`. Weights need not add up to 1: each frame
is normalised. This file is parsed, never imported or run, so keep
`spk_mix_map` a plain literal.
"""

spk_mix_map = {
    0: [[0.0, 0.5, 1, 0.5], [0.5, 1, 0.5, 1]],
    1: [[0.0, 0.35, 1, 0.5], [0.35, 0.75, 0.75, 1], [0.75, 1, 0.45, 1]],
    2: [[0.0, 0.35, 1, 0.5], [0.35, 0.75, 0.75, 1], [0.75, 1, 0.45, 1]],
}
