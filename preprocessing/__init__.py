"""Library code behind the three preprocessing commands.

`resample.py`, `preprocess_flist_config.py` and `preprocess_hubert_f0.py` at the
repository root only parse arguments and call into this package, so the logic
can be unit-tested and reused without spawning subprocesses.
"""
