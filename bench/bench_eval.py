"""What one evaluation costs: the validation figures against upstream's conversion alone.

    python bench/bench_eval.py                  # CPU-sized model, 4 clips of 2 s
    python bench/bench_eval.py --full --seconds 5

Times (the fastest of four passes after an untimed one), per validation clip: upstream's evaluation
(the inference-path conversion only), this project's (`evaluate_generator`:
conversion, posterior reconstruction, mels and the pitch measurement), and
the pitch measurement alone; then one training step for scale. `--full` uses
the 44 kHz template model (configs_template/config_template.json). The
synthetic clips come from the test helpers; nothing is saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.config_schema import validate_config  # noqa: E402
from core.hparams import HParams  # noqa: E402
from data_utils import TextAudioSpeakerLoader, make_eval_loader  # noqa: E402
from evaluation import evaluate_generator  # noqa: E402
from evaluation.pitch_accuracy import build_pitch_meter  # noqa: E402


def synthetic_config(workdir: Path, full: bool, seconds: float, clips: int) -> dict:
    from bench.synthetic_set import TEMPLATE, make_config, make_dataset

    rate, hop, ssl_dim = (44100, 512, 768) if full else (22050, 256, 32)
    make_dataset(
        workdir,
        items_per_speaker=clips // 2 + 2,
        val_per_speaker=clips // 2,
        seconds=seconds,
        sampling_rate=rate,
        hop_length=hop,
        ssl_dim=ssl_dim,
    )
    config = make_config(workdir, train={"num_workers": 0})
    if full:
        template = json.loads(TEMPLATE.read_text(encoding="utf-8"))
        config["model"] = {**template["model"], "n_speakers": 2}
        files = {key: config["data"][key] for key in ("training_files", "validation_files")}
        config["data"] = {**template["data"], **files}
    return config


def seconds_per_clip(work, clips: int, repeats: int = 4) -> float:
    """The fastest of `repeats` timed passes (after an untimed one), per clip.

    The minimum, because other processes on a shared machine only ever add time.
    """
    work()  # untimed: first calls allocate
    fastest = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest / clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the 44 kHz template model")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    parser.add_argument("--clips", type=int, default=4, help="validation clips (2 speakers)")
    args = parser.parse_args()
    import train

    with tempfile.TemporaryDirectory() as workdir:
        config, _ = validate_config(
            synthetic_config(Path(workdir), args.full, args.seconds, args.clips), "bench"
        )
        hps = HParams(**config)
        hps.model_dir = str(Path(workdir) / "logs")
        from core.distributed import StopRequest, init_runtime

        runtime = init_runtime(0, 0, 1, "cpu", False, "fp16")
        trainer = train.Trainer(hps, runtime, StopRequest(), max_steps=None)
        generator, device = trainer.net_g, runtime.device
        dataset = TextAudioSpeakerLoader(hps.data.validation_files, hps, vol_aug=False)
        batches = list(make_eval_loader(dataset, hps, "cpu"))
        meter = build_pitch_meter(hps.data.hop_length, hps.data.sampling_rate)

        def upstream() -> None:
            with torch.no_grad():
                for c, f0, _, _, g, _, uv, vol in batches:
                    generator.eval().infer(c, f0, uv, g=g, vol=vol)
            generator.train()

        def pitch_only() -> None:
            for _, f0, _, y, _, _, _, _ in batches:
                meter.compute_f0_uv(y[0, 0].double().numpy(), p_len=f0.shape[-1])

        n = len(batches)
        old = seconds_per_clip(upstream, n)
        new = seconds_per_clip(lambda: evaluate_generator(generator, batches, hps, device), n)
        pitch = seconds_per_clip(pitch_only, n)
        batch = next(iter(trainer.train_loader))
        step = seconds_per_clip(lambda: trainer.train_step(batch), 1)
    model = "44 kHz template model" if args.full else "CPU-sized test model"
    print(f"{model}, {n} clips of {args.seconds:g} s, {torch.get_num_threads()} threads")
    print(f"upstream evaluation (conversion only): {old:.3f} s per clip")
    print(
        f"validation figures (evaluate_generator): {new:.3f} s per clip "
        f"({np.divide(new, old):.2f}x upstream's)"
    )
    print(f"of which pitch measurement (dio): {pitch:.3f} s per clip")
    print(f"one training step (batch {hps.train.batch_size}): {step:.3f} s")


if __name__ == "__main__":
    main()
