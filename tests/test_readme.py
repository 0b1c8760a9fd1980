"""The README cannot rot: its config table is the schema, its commands exist.

The commands themselves run for real in the end-to-end tests and the demo
(resample, preprocessing, training under the launcher and torchrun, inference,
cluster, index, compress). Here every command line in the README's code blocks
is checked against the program it calls: the program runs with `--help` (or
`make -n`), and every flag the README uses is one the program accepts.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core.config_schema import render_config_table

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def help_text(command: list[str]) -> str:
    return _help_text(tuple(command))


@functools.cache
def _help_text(command: tuple[str, ...]) -> str:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (command, result.stderr[-2000:])
    return result.stdout + result.stderr


def test_config_table_is_the_schema():
    start = README.index("<!-- config-table:start -->") + len("<!-- config-table:start -->")
    end = README.index("<!-- config-table:end -->")
    assert README[start:end].strip() == render_config_table().strip()


def test_every_readme_command_exists_with_its_flags():
    commands = readme_commands()
    assert len(commands) >= 15
    python_bin = Path(sys.executable).parent
    checked = set()
    for line in commands:
        words = shlex.split(line.replace("\\", "/"))
        program = words[0]
        if program == "make":
            help_text(["make", "-n", *words[1:]])
            continue
        if program.endswith("python") and words[1] == "-m":
            module = words[2]
            text = help_text([sys.executable, "-m", module, "--help"])
            flags = words[3:]
        elif program.endswith("pip"):
            text = help_text([sys.executable, "-m", "pip", *words[1:2], "--help"])
            flags = [word for word in words[2:] if word.startswith("--")]
            for requirement in words[words.index("-r") + 1 :][:1] if "-r" in words else []:
                assert (REPO / requirement).is_file(), requirement
        elif program == "python":
            script = REPO / words[1]
            assert script.is_file(), line
            text = help_text([sys.executable, str(script), "--help"])
            flags = words[2:]
        elif program == "torchrun":
            split = words.index("train.py")
            text = help_text([str(python_bin / program), "--help"])
            flags = words[1:split]
            train_help = help_text([sys.executable, str(REPO / "train.py"), "--help"])
            for flag in (word for word in words[split + 1 :] if word.startswith("-")):
                assert re.search(rf"(^|[\s,\[]){re.escape(flag)}([\s,=\]]|$)", train_help, re.M)
        elif program == "tensorboard":
            text = help_text([str(python_bin / program), "--help"])
            flags = words[1:]
        else:
            pytest.fail(f"README command with an unknown program: {line}")
        for flag in flags:
            if flag.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", flag):
                assert re.search(rf"(^|[\s,\[]){re.escape(flag)}([\s,=\]]|$)", text, re.M), (
                    f"{flag} of `{line}` is not in {program} --help"
                )
        checked.add(words[1] if program == "python" else program)
    for script in ("resample.py", "preprocess_flist_config.py", "preprocess_hubert_f0.py",
                   "train.py", "inference_main.py", "cluster/train_cluster.py",
                   "train_index.py", "compress_model.py", "bench/bench_train.py"):
        assert script in checked, script


def test_readme_names_the_pretrained_files_the_code_expects():
    from modules.speech_encoders import encoders

    for name in ("checkpoint_best_legacy_500.pt", "hubert-soft-0d54a1f4.pt", "rmvpe.pt",
                 "fcpe.pt"):
        assert f"pretrain/{name}" in README
    source = Path(encoders.__file__).read_text()
    assert "checkpoint_best_legacy_500.pt" in source and "hubert-soft-0d54a1f4.pt" in source
