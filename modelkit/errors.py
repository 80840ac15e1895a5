"""ModelBuildError, and the checks that turn a bad weights file into one clear message."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

# How many offending keys an error lists: enough to see the pattern, short enough for one line.
KEYS_SHOWN = 3


class ModelBuildError(Exception):
    """A model could not be built or converted; the message says which file and why."""


def read_torch_file(path: Path) -> Any:
    """The object saved in a torch.save file, read as plain tensors and containers only."""
    import torch  # here, not at the top: the reference model is built without torch

    if not path.is_file():
        raise ModelBuildError(f"{path}: file not found")
    try:
        # weights_only: a weights file must never be able to run code when it is read.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a bad file surfaces as pickle, zip, EOF or runtime errors
        raise ModelBuildError(f"{path}: not a readable PyTorch file ({_root_cause(exc)})") from exc


def load_exactly(model: nn.Module, state_dict: Mapping[str, Any], path: Path) -> None:
    """Loads every parameter and buffer of `model` from `state_dict`, or says what does not fit."""
    import torch

    expected = model.state_dict()
    # torch fills in BatchNorm's step counter when a checkpoint predates it (torch < 0.4.1).
    missing = [
        k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")
    ]
    unexpected = [k for k in state_dict if k not in expected]
    not_tensors = [k for k in state_dict if not isinstance(state_dict[k], torch.Tensor)]
    misshapen = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if isinstance(state_dict.get(k), torch.Tensor) and state_dict[k].shape != expected[k].shape
    ]
    problems = [
        _listing(missing, "missing key"),
        _listing(unexpected, "unexpected key"),
        _listing(not_tensors, "entry that is not a tensor"),
        _listing(misshapen, "tensor with the wrong shape"),
    ]
    found = "; ".join(p for p in problems if p)
    if found:
        raise ModelBuildError(f"{path}: does not fit {type(model).__name__}: {found}")
    model.load_state_dict(dict(state_dict), strict=True)


def _listing(keys: list[str], what: str) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:KEYS_SHOWN]) + (", ..." if len(keys) > KEYS_SHOWN else "")
    return f"{len(keys)} {what}{'s' if len(keys) > 1 else ''} ({shown})"


def _root_cause(exc: BaseException) -> str:
    # torch wraps the real reason ("Unsupported operand 95") in a page of weights_only advice.
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
