"""The project's shape: one home per contract, registries that agree, no import cycles."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import feature_files as ff
from core import components
from core.config_schema import validate_config
from core.errors import UserError
from modules.f0_predictors import get_f0_predictor
from modules.speech_encoders import load_speech_encoder
from preprocessing import features, flist_config
from tests.helpers_data import make_config

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "checkpoint", "cluster", "core", "demo", "diffusion", "evaluation", "inference", "modules",
    "preprocessing",
)


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every project source file outside tests."""
    found = {}
    for path in REPO.rglob("*.py"):
        relative = path.relative_to(REPO)
        if relative.parts[0] not in PACKAGES and len(relative.parts) > 1:
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere in its body (lazy imports too)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_import_map_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_network_layers_do_not_import_infrastructure_beyond_errors_io_and_registries() -> None:
    graph = import_graph()
    allowed = {"core.errors", "core.safe_io", "core.components", "core"}
    for name, targets in graph.items():
        if name.startswith("modules"):
            infrastructure = {t for t in targets if not t.startswith("modules")}
            assert infrastructure <= allowed, (name, infrastructure - allowed)


def test_feature_file_names_live_in_feature_files_only() -> None:
    """No other source file spells a feature file suffix in code (docstrings aside)."""
    suffixes = set(ff.OUTPUT_SUFFIXES)
    for name, path in project_modules().items():
        if name == "feature_files":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docstrings:
                    continue
                spelled = {suffix for suffix in suffixes if suffix in node.value}
                assert not spelled, f"{path}: spells {spelled}; use feature_files"


def test_utils_keeps_upstreams_names_as_re_exports() -> None:
    import checkpoint
    import utils
    from core import hparams, summaries

    assert utils.load_checkpoint is checkpoint.load_checkpoint
    assert utils.save_checkpoint is checkpoint.save_checkpoint
    assert utils.latest_checkpoint_path is checkpoint.latest_checkpoint_path
    assert utils.HParams is hparams.HParams
    assert utils.get_hparams is hparams.get_hparams
    assert utils.plot_spectrogram_to_numpy is summaries.plot_spectrogram_to_numpy
    source = (REPO / "utils.py").read_text(encoding="utf-8")
    assert "def " not in source and "class " not in source


def test_get_hparams_copies_the_config_into_the_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import utils

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train": {"seed": 7}, "data": {}, "model": {}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py", "-c", str(config), "-m", "run"])
    hps = utils.get_hparams()
    assert hps.train.seed == 7 and hps.model_dir.endswith("run")
    saved = tmp_path / "logs" / "run" / "config.json"
    assert json.loads(saved.read_text()) == json.loads(config.read_text())
    assert not list(saved.parent.glob(".*.tmp"))
    assert utils.get_hparams(init=False).train.seed == 7


# --------------------------------------------------------------------------- registries


@pytest.mark.parametrize("name", sorted(components.SPEECH_ENCODERS))
def test_every_registered_encoder_is_accepted_everywhere(name: str, tmp_path: Path) -> None:
    spec = components.SPEECH_ENCODERS[name]
    # The loader knows the name: it gets as far as looking for the weights.
    with pytest.raises(UserError, match="weights not found"):
        load_speech_encoder(name, weights_path=tmp_path / "absent.pt")
    template = flist_config.load_template(REPO / "configs_template" / "config_template.json")
    config = flist_config.build_config(template, {"a": 0}, name)
    assert config["model"]["ssl_dim"] == spec.width
    config = make_config(tmp_path, model={"speech_encoder": name, "ssl_dim": spec.width})
    _, messages = validate_config(config, "test")
    assert not [m for m in messages if "speech_encoder" in m]


@pytest.mark.parametrize(
    "name", [*components.UNIMPLEMENTED_SPEECH_ENCODERS, "no-such-encoder"]
)
def test_unloadable_encoders_get_one_message_everywhere(name: str, tmp_path: Path) -> None:
    expected = components.speech_encoder_problem(name, "WHERE").split(": ", 1)[1]
    with pytest.raises(UserError) as caught:
        load_speech_encoder(name)
    assert expected in str(caught.value)
    with pytest.raises(UserError) as caught:
        flist_config.build_config({"train": {}, "model": {}}, {"a": 0}, name)
    assert expected in str(caught.value)
    with pytest.raises(UserError) as caught:
        validate_config(make_config(tmp_path, model={"speech_encoder": name}), "test")
    assert expected in str(caught.value)
    is_upstreams = name in components.UNIMPLEMENTED_SPEECH_ENCODERS
    assert ("does not implement" in expected) == is_upstreams


@pytest.mark.parametrize("name", [*components.UNIMPLEMENTED_F0_PREDICTORS, "yin"])
def test_unloadable_f0_predictors_get_one_message_everywhere(name: str, tmp_path: Path) -> None:
    expected = components.f0_predictor_problem(name, "WHERE").split(": ", 1)[1]
    with pytest.raises(UserError) as caught:
        get_f0_predictor(name)
    assert expected in str(caught.value)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(make_config(tmp_path)))
    with pytest.raises(UserError) as caught:
        features.load_settings(str(config), name)
    assert expected in str(caught.value)


def test_every_registered_f0_predictor_and_vocoder_builds() -> None:
    from models import SynthesizerTrn

    for name in components.F0_PREDICTORS:
        # The networks need their weights; their loaders are tested in their own files.
        if name not in components.NEURAL_F0_PREDICTORS:
            assert get_f0_predictor(name, hop_length=256, sampling_rate=22050) is not None
    for name, snake in components.VOCODERS.items():
        net = SynthesizerTrn(
            17, 8, inter_channels=8, hidden_channels=8, filter_channels=16, n_heads=2,
            n_layers=1, kernel_size=3, p_dropout=0.0, resblock="1", resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1]], upsample_rates=[4, 2], upsample_initial_channel=16,
            upsample_kernel_sizes=[8, 4], gin_channels=8, ssl_dim=8, n_speakers=2,
            sampling_rate=8000, vocoder_name=name,
        )
        has_snake = any("alpha" in key for key in net.state_dict())
        assert has_snake == snake, name
    with pytest.raises(UserError, match="unknown vocoder"):
        components.vocoder_uses_snake("hifigan")
