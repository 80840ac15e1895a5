"""The local server's own virtual environment: numpy < 2, onnxruntime and nvidia-pytriton.

It is separate from the orchestrator's because the Python backend returns empty tensors
when numpy >= 2 is installed where it runs, while the orchestrator's OpenCV needs numpy 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelkit.errors import ModelBuildError

REQUIREMENTS = ("numpy<2", "onnxruntime>=1.18,<2", "nvidia-pytriton==0.7.0")
MARKER = ".dh-requirements.json"


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of one installed tritonserver live."""

    venv: Path
    server: Path
    backends: Path
    libraries: Path

    @property
    def bin_dir(self) -> Path:
        return self.venv / "bin"


def _locate(venv_dir: Path) -> TritonInstall:
    python = venv_dir / "bin" / "python"
    probe = (
        "import json, sys, pathlib, pytriton; "
        "root = pathlib.Path(pytriton.__file__).parent; "
        "py = f'{sys.version_info[0]}.{sys.version_info[1]}'; "
        "print(json.dumps({'root': str(root), 'py': py}))"
    )
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ModelBuildError(f"{venv_dir}: nvidia-pytriton is not importable: {result.stderr}")
    found = json.loads(result.stdout)
    root = Path(found["root"])
    backends = root / "tritonserver" / "backends"
    stub = (
        root / "tritonserver" / "python_backend_stubs" / found["py"] / "triton_python_backend_stub"
    )
    if not stub.is_file():
        raise ModelBuildError(f"{stub}: no Python-backend stub for Python {found['py']}")
    # The stub must sit in pytriton's own backend directory: copied anywhere else it cannot
    # find the bundled libcudart.
    placed = backends / "python" / stub.name
    if not placed.is_file():
        shutil.copy2(stub, placed)
    return TritonInstall(
        venv=venv_dir,
        server=root / "tritonserver" / "bin" / "tritonserver",
        backends=backends,
        libraries=root.parent / "nvidia_pytriton.libs",
    )


def ensure_environment(venv_dir: Path, *, log: Callable[[str], None] = print) -> TritonInstall:
    """Creates (once) and returns the Triton virtual environment at `venv_dir`."""
    # Absolute: the server runs with another working directory and finds Python via PATH.
    venv_dir = venv_dir.resolve()
    marker = venv_dir / MARKER
    wanted = json.dumps(sorted(REQUIREMENTS))
    if not (marker.is_file() and marker.read_text() == wanted):
        log(f"local Triton: installing {', '.join(REQUIREMENTS)} into {venv_dir}")
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        result = subprocess.run([*pip, *REQUIREMENTS], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise ModelBuildError(f"{venv_dir}: installing the Triton environment failed:\n{tail}")
        marker.write_text(wanted)
    return _locate(venv_dir)


if __name__ == "__main__":
    print(ensure_environment(Path(sys.argv[1] if len(sys.argv) > 1 else ".venv-triton")))
