"""The checkpoint format, in one place: where a reader asks "what is in a G_*.pth?".

- `files`: the file layout (upstream's four keys plus our `train_state`),
  atomic save, data-only read, lenient and strict loading, the fit check.
- `legacy_keys`: our parametrised weight-norm keys <-> upstream's on-disk names.
- `train_state`: step, epoch, schedules, scaler and every rank's random state.
- `names`: the file names (`G_<step>.pth`, `D_<step>.pth`, release files), listing.
- `resume`: the newest usable pair, pruning old pairs.
- `builders`: the networks a config describes, and loading one for inference.
"""

from checkpoint.builders import (
    build_discriminator,
    build_generator,
    generator_disk_shapes,
    generator_hparams,
    load_generator,
    read_generator_file,
)
from checkpoint.files import (
    CHECKPOINT_KEYS,
    CONFIG_KEY,
    POSTERIOR_ENCODER_PREFIX,
    StateDictFit,
    check_fit,
    disk_model_state,
    embedded_config,
    load_checkpoint,
    model_state_for_disk,
    read_checkpoint,
    save_checkpoint,
    save_release,
    saved_model_state,
    unwrap_model,
)
from checkpoint.legacy_keys import from_legacy_state_dict, to_legacy_state_dict
from checkpoint.names import (
    DISCRIMINATOR_FILES,
    GENERATOR_FILES,
    checkpoint_step,
    checkpoint_steps,
    discriminator_path,
    generator_path,
    generator_steps,
    newest_generator,
    release_path,
)
from checkpoint.resume import (
    ResumePoint,
    clean_checkpoints,
    find_resume_point,
    latest_checkpoint_path,
    remove_stale_temp_files,
)
from checkpoint.train_state import TrainState, capture_rng_state, restore_rng_state

__all__ = [
    "CHECKPOINT_KEYS",
    "CONFIG_KEY",
    "DISCRIMINATOR_FILES",
    "GENERATOR_FILES",
    "POSTERIOR_ENCODER_PREFIX",
    "ResumePoint",
    "StateDictFit",
    "TrainState",
    "build_discriminator",
    "build_generator",
    "capture_rng_state",
    "check_fit",
    "checkpoint_step",
    "checkpoint_steps",
    "clean_checkpoints",
    "discriminator_path",
    "disk_model_state",
    "embedded_config",
    "find_resume_point",
    "from_legacy_state_dict",
    "generator_disk_shapes",
    "generator_hparams",
    "generator_path",
    "generator_steps",
    "latest_checkpoint_path",
    "load_checkpoint",
    "load_generator",
    "model_state_for_disk",
    "newest_generator",
    "read_checkpoint",
    "read_generator_file",
    "release_path",
    "remove_stale_temp_files",
    "restore_rng_state",
    "save_checkpoint",
    "save_release",
    "saved_model_state",
    "to_legacy_state_dict",
    "unwrap_model",
]
