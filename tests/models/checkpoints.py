"""Checkpoint files of every accepted layout, written the way their trainers write them,
with random weights: the tests cannot download real ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from modelkit.wav2lip import Wav2Lip, random_generator
from modelkit.wav2lip_layouts import Layout
from tests.conftest import MODEL_REPOSITORY

# How a trainer saved the generator: "plain" is a bare state dict; "training" is Wav2Lip's
# save_checkpoint under nn.DataParallel ({"state_dict": {"module.…": …}, step counters});
# "gan" is the same as written by hq_wav2lip_train.py for Wav2Lip-GAN, optimiser included.
STYLES = ("plain", "training", "gan")


def trained_like(layout: Layout, seed: int) -> Wav2Lip:
    """Random weights with BatchNorm statistics, affine terms and PReLU slopes away from
    their defaults, as in a trained checkpoint, so a conversion that dropped them shows."""
    model = random_generator(seed, layout)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.8, 1.2, generator=generator)
                module.bias.normal_(0.0, 0.05, generator=generator)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.05, 0.4, generator=generator)
    return model


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: Path, style: str) -> Path:
    if style == "plain":
        torch.save(state_dict, path)
        return path
    saved: dict[str, object] = {
        "state_dict": {f"module.{key}": value for key, value in state_dict.items()},
        "global_step": 1,
        "global_epoch": 1,
    }
    if style == "gan":
        first = next(iter(state_dict))
        saved["optimizer"] = {
            "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}},
            "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.999), "params": [0], "name": first}],
        }
    torch.save(saved, path)
    return path


def lipsync_repository(tmp_path: Path) -> Path:
    """A model repository holding the production lipsync config and no model yet."""
    repository = tmp_path / "model_repository"
    shutil.copytree(
        MODEL_REPOSITORY / "lipsync", repository / "lipsync", ignore=shutil.ignore_patterns("1")
    )
    return repository
