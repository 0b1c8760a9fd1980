"""`make demo`: the whole so-vits-svc workflow on a synthetic singing set, on a CPU.

`synth` makes the singers, `standin` the content-encoder stand-in, `pipeline`
runs the repository's commands one after another in a workspace folder.
"""
