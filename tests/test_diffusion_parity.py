"""Parity of diffusion/ with upstream so-vits-svc 4.1's shallow diffusion (recorded fixtures).

`tests/fixtures/upstream-4.1-diffusion/README.md` says how the references were
made: seeds, draw order, tolerances. Where upstream fails and this project
works (PNDM with a batch of 2, `init_spkmix`, the per-frame speaker mix), the
tests check the fix against what upstream does compute: PNDM per item against
the batch-of-one references, the per-frame mix against the dict mix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.errors import UserError
from diffusion.config import DiffusionConfig, ModelSection, load_diffusion_config
from diffusion.dpm_solver import DPM_SOLVER_MIN_LAMBDA
from diffusion.files import load_unit2mel
from diffusion.gaussian import schedule_arrays
from diffusion.noise_schedule import NoiseScheduleVP
from diffusion.unit2mel import Unit2Mel

FIXTURES = Path(__file__).parent / "fixtures" / "upstream-4.1-diffusion"
MANIFEST = json.loads((FIXTURES / "diffusion_manifest.json").read_text())
SHALLOW_ATOL, FULL_ATOL = 5e-5, 2e-4  # the fixture README's agreement figures
K_SHALLOW, SPEEDUP = 20, 5


def _load(name: str) -> dict:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model() -> Unit2Mel:
    torch.set_num_threads(1)
    loaded, _ = load_unit2mel(FIXTURES / "diffusion_model.pt", FIXTURES / "diffusion_config.yaml")
    return loaded


@pytest.fixture(scope="module")
def inputs() -> dict:
    return _load("diffusion_inputs.pt")


@pytest.fixture(scope="module")
def outputs() -> dict:
    return _load("diffusion_outputs.pt")


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = float((ours - ref).detach().abs().max())
    assert diff <= atol, f"{what}: max difference {diff} > {atol}"


def _shapes(model: torch.nn.Module) -> dict[str, list]:
    return {
        k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    }


# ------------------------------------------------------------------------ layout


def test_state_dict_names_and_shapes_are_upstreams(model: Unit2Mel) -> None:
    fixture = MANIFEST["fixture"]
    assert _shapes(model) == fixture["state_dict"]
    assert list(model.state_dict()) == list(fixture["state_dict"])  # upstream's order too
    assert sum(v.numel() for v in model.state_dict().values()) == fixture["params"]


@pytest.mark.parametrize("entry", ["template", "template_n_spk_4"])
def test_template_layout_matches_the_shared_base_model(entry: str) -> None:
    """The template sizes (768 -> 256, 20 x 512, 1000 steps), built on the meta device."""
    config = DiffusionConfig(model=ModelSection(n_spk=MANIFEST[entry]["n_spk"]))
    with torch.device("meta"):
        built = Unit2Mel.from_config(config)
    assert _shapes(built) == MANIFEST[entry]["state_dict"]
    assert sum(v.numel() for v in built.state_dict().values()) == MANIFEST[entry]["params"]


def test_schedule_buffers_equal_upstreams_saved_ones(model: Unit2Mel) -> None:
    saved = _load("diffusion_model.pt")["model"]
    for name, values in schedule_arrays(100).items():
        ours = torch.tensor(values, dtype=torch.float32)
        assert torch.allclose(ours, saved[f"decoder.{name}"], rtol=1e-6, atol=0), name
    assert float(saved["decoder.spec_min"]) == -12 and float(saved["decoder.spec_max"]) == 2


def test_config_reads_upstreams_yaml() -> None:
    config = load_diffusion_config(FIXTURES / "diffusion_config.yaml")
    assert config.data.encoder_out_channels == 32
    assert (config.model.n_layers, config.model.n_chans, config.model.timesteps) == (2, 32, 100)
    assert config.k_step_max == 100 and config.model.k_step_max == 0
    assert (config.infer.method, config.infer.speedup) == ("dpm-solver++", 5)
    assert config.spk == {"alto": 0, "tenor": 1}


# ------------------------------------------------------------------------ training


def test_training_loss_under_the_recorded_seed(
    model: Unit2Mel, inputs: dict, outputs: dict
) -> None:
    model.train()
    try:
        torch.manual_seed(outputs["loss_seed"])
        terms = model.loss_terms(
            inputs["units"],
            inputs["f0"],
            inputs["volume"],
            inputs["spk_id"],
            inputs["gt_spec"],
            aug_shift=inputs["aug_shift"],
        )
        torch.manual_seed(outputs["loss_seed"])
        loss = model(
            inputs["units"],
            inputs["f0"],
            inputs["volume"],
            inputs["spk_id"],
            aug_shift=inputs["aug_shift"],
            gt_spec=inputs["gt_spec"],
            infer=False,
            k_step=100,
        )
    finally:
        model.eval()
    assert torch.equal(terms.t, outputs["loss_t"])
    assert torch.equal(terms.noise, outputs["loss_noise"])  # the strided draw, bit for bit
    _assert_close(terms.x_start, outputs["loss_norm_spec"], 1e-6, "x_start")
    _assert_close(terms.x_noisy, outputs["loss_x_noisy"], 1e-5, "x_noisy")
    _assert_close(terms.noise_pred, outputs["loss_eps_pred"], 1e-5, "eps_pred")
    assert torch.allclose(terms.loss, outputs["loss"], rtol=1e-5, atol=0)
    assert torch.equal(loss, terms.loss)
    condition = model.condition(
        inputs["units"],
        inputs["f0"],
        inputs["volume"],
        inputs["spk_id"],
        aug_shift=inputs["aug_shift"],
    )
    _assert_close(condition, outputs["condition_train"], 1e-5, "condition_train")


def test_k_step_max_limits_the_training_steps(inputs: dict) -> None:
    small = Unit2Mel(32, 2, True, 128, 1, 8, 32, timesteps=100, k_step_max=7)
    small.train()
    torch.manual_seed(0)
    drawn = torch.cat(
        [
            small.loss_terms(
                inputs["units"], inputs["f0"], inputs["volume"], inputs["spk_id"], inputs["gt_spec"]
            ).t
            for _ in range(40)
        ]
    )
    assert int(drawn.max()) == 6 and int(drawn.min()) == 0


# ------------------------------------------------------------------------ inference

CASES = {
    **{
        f"shallow_{m}": {"shallow": True, "method": m}
        for m in ("ddim", "dpm-solver", "dpm-solver++", "unipc")
    },
    **{
        f"full_{m}": {"shallow": False, "method": m}
        for m in ("ddim", "dpm-solver", "dpm-solver++", "unipc")
    },
    "shallow_pndm_b1": {"shallow": True, "method": "pndm", "batch": 1},
    "full_pndm_b1": {"shallow": False, "method": "pndm", "batch": 1},
    "shallow_ddpm": {"shallow": True, "method": "ddim", "speedup": 1},
    "full_ddpm": {"shallow": False, "method": "dpm-solver", "speedup": 1},
    "shallow_ddim_aug_shift": {"shallow": True, "method": "ddim", "aug_shift": True},
    "shallow_ddim_spk_mix": {"shallow": True, "method": "ddim", "spk_mix_dict": {0: 0.25, 1: 0.75}},
    "shallow_ddim_k100": {"shallow": True, "method": "ddim", "k_step": 100, "speedup": 10},
}


def _infer(
    model: Unit2Mel, inputs: dict, seed: int, case: dict, **overrides: object
) -> torch.Tensor:
    """Upstream's inference call for one case of the fixture, under its seed."""
    case = {**case, **overrides}
    batch = case.get("batch", 2)
    mix = case.get("spk_mix_dict")
    spk_id = case.get("spk_id", None if mix else inputs["spk_id"][:batch])
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(
            inputs["units"][:batch],
            inputs["f0"][:batch],
            inputs["volume"][:batch],
            spk_id,
            spk_mix_dict=mix,
            aug_shift=inputs["aug_shift"][:batch] if case.get("aug_shift") else None,
            gt_spec=inputs["gt_spec"][:batch] if case["shallow"] else None,
            infer=True,
            infer_speedup=case.get("speedup", SPEEDUP),
            method=case["method"],
            k_step=case.get("k_step", K_SHALLOW),
            use_tqdm=False,
        )


@pytest.mark.parametrize("key", sorted(CASES))
def test_every_sampler_matches_upstream(
    model: Unit2Mel, inputs: dict, outputs: dict, key: str
) -> None:
    ours = _infer(model, inputs, outputs["infer_seed"], CASES[key])
    atol = SHALLOW_ATOL if CASES[key]["shallow"] else FULL_ATOL
    _assert_close(ours, outputs[key], atol, key)


def test_every_reference_output_is_checked(outputs: dict) -> None:
    mels = {k for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.dim() == 3}
    assert mels - {"condition_train", "condition_infer"} == set(CASES)


def test_sampling_starts_as_upstream(model: Unit2Mel, inputs: dict, outputs: dict) -> None:
    condition = model.condition(inputs["units"], inputs["f0"], inputs["volume"], inputs["spk_id"])
    _assert_close(condition, outputs["condition_infer"], 1e-5, "condition_infer")
    torch.manual_seed(outputs["infer_seed"])
    x, k = model.decoder.start(condition, inputs["gt_spec"], K_SHALLOW)
    assert k == K_SHALLOW
    _assert_close(x, outputs["shallow_x_init"], 1e-5, "shallow_x_init")
    torch.manual_seed(outputs["infer_seed"])
    x, k = model.decoder.start(condition, None, K_SHALLOW)
    assert k == 100 and torch.equal(x, outputs["full_noise"])  # k_step ignored for full


def test_pndm_works_for_a_batch_and_equals_each_item_alone(
    model: Unit2Mel, inputs: dict, outputs: dict
) -> None:
    """Upstream raises for a batch of 2; here item 0 equals upstream's batch-of-one result
    (the strided start noise gives item 0 the same draws) and item 1 its own batch-of-one run."""
    assert "Boolean value of Tensor" in outputs["errors"]["shallow_pndm"]
    seed = outputs["infer_seed"]
    both = _infer(model, inputs, seed, {"shallow": True, "method": "pndm"})
    _assert_close(both[:1], outputs["shallow_pndm_b1"], SHALLOW_ATOL, "pndm item 0")
    full = _infer(model, inputs, seed, {"shallow": False, "method": "pndm"})
    _assert_close(full[:1], outputs["full_pndm_b1"], FULL_ATOL, "full pndm item 0")
    condition = model.condition(inputs["units"], inputs["f0"], inputs["volume"], inputs["spk_id"])
    torch.manual_seed(seed)
    start, _ = model.decoder.start(condition, inputs["gt_spec"], K_SHALLOW)
    batch = model.decoder.sample(start, condition, K_SHALLOW, SPEEDUP, "pndm")
    alone = model.decoder.sample(start[1:], condition[1:], K_SHALLOW, SPEEDUP, "pndm")
    _assert_close(batch[1:], alone, 1e-5, "pndm item 1 alone")


def test_per_frame_speaker_mix_equals_the_dict_mix(
    model: Unit2Mel, inputs: dict, outputs: dict
) -> None:
    """Upstream's init_spkmix and per-frame mix raise; here a constant mix is the dict mix."""
    assert "hidden_size" in outputs["init_spkmix_error"]
    model.init_spkmix(2)
    frames = inputs["units"].shape[1]
    weights = torch.tensor([0.25, 0.75]).expand(frames, 2)  # (T, n_spk), as Svc passes it
    seed = outputs["infer_seed"]
    reference = outputs["shallow_ddim_spk_mix"]
    per_frame = _infer(model, inputs, seed, {"shallow": True, "method": "ddim", "spk_id": weights})
    _assert_close(per_frame, reference, SHALLOW_ATOL, "per-frame mix (T, n_spk)")
    batched = weights.expand(2, frames, 2)
    per_item = _infer(model, inputs, seed, {"shallow": True, "method": "ddim", "spk_id": batched})
    _assert_close(per_item, reference, SHALLOW_ATOL, "per-frame mix (B, T, n_spk)")
    one_hot = torch.zeros(frames, 2)
    one_hot[:, 1] = 1  # speaker 1 alone equals spk_id 1
    mixed = model.condition(inputs["units"][:1], inputs["f0"][:1], inputs["volume"][:1], one_hot)
    plain = model.condition(
        inputs["units"][:1], inputs["f0"][:1], inputs["volume"][:1], torch.tensor([[1]])
    )
    _assert_close(mixed, plain, 1e-6, "one-hot mix")
    with pytest.raises(UserError, match="has 2"):
        model.init_spkmix(3)


def test_what_the_model_cannot_do_is_one_line(model: Unit2Mel, inputs: dict) -> None:
    case = {"shallow": True, "method": "ddim"}
    with pytest.raises(UserError, match="k_step_max 100") as error:
        _infer(model, inputs, 0, case, k_step=101)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="choose one of"):
        _infer(model, inputs, 0, case, method="euler")
    with pytest.raises(UserError, match="2 or more"):
        _infer(model, inputs, 0, case, method="unipc", k_step=5)
    shallow_only = Unit2Mel(32, 2, True, 128, 1, 8, 32, timesteps=100, k_step_max=50).eval()
    with pytest.raises(UserError, match="only refine"):
        _infer(shallow_only, inputs, 0, {"shallow": False, "method": "ddim"})


def test_samplers_run_where_upstream_cannot(model: Unit2Mel, inputs: dict) -> None:
    """PNDM with a single stride (k_step <= speedup) passes a Python int to the network upstream."""
    out = _infer(model, inputs, 0, {"shallow": True, "method": "pndm", "k_step": 5, "speedup": 5})
    assert out.shape == inputs["gt_spec"].shape and torch.isfinite(out).all()


def test_continuous_schedule_interpolates_and_clips_as_dpm_solver() -> None:
    """log(alpha_t) is exact at t_n = (n + 1) / N, linear between and beyond; DPM-Solver's
    guard drops a tail whose half log-SNR is below -5.1 (never with so-vits-svc's schedule)."""
    betas = torch.tensor(schedule_arrays(100)["betas"], dtype=torch.float32)
    schedule = NoiseScheduleVP(betas, min_lambda=DPM_SOLVER_MIN_LAMBDA)
    assert schedule.total_N == 100
    knots = schedule.marginal_log_mean_coeff(schedule.t_array)
    assert torch.allclose(knots, 0.5 * torch.log(1 - betas).cumsum(0), atol=1e-7)
    middle = schedule.marginal_log_mean_coeff(torch.tensor([0.015]))  # halfway, steps 0 and 1
    assert torch.allclose(middle, knots[:2].mean(), atol=1e-7)
    assert torch.allclose(schedule.model_time(torch.tensor([0.5])), torch.tensor([49.0]))
    template = torch.tensor(schedule_arrays(1000)["betas"], dtype=torch.float32)
    assert NoiseScheduleVP(template, min_lambda=DPM_SOLVER_MIN_LAMBDA).total_N == 1000
    steep = NoiseScheduleVP(torch.linspace(1e-4, 0.5, 100), min_lambda=DPM_SOLVER_MIN_LAMBDA)
    lambdas = steep.marginal_lambda(steep.t_array)
    assert steep.total_N < 100 and float(lambdas.min()) >= DPM_SOLVER_MIN_LAMBDA
