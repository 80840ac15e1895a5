"""Builds every model.onnx in the model repository; skips those whose inputs did not change.

    python -m modelkit.build                       # reference lipsync + S3FD from real weights
    python -m modelkit.build --lipsync grey-box    # the old analytic test model
    python -m modelkit.build --lipsync wav2lip-random [--face-size 96|192|256|288|384]
    python -m modelkit.build --lipsync checkpoint --wav2lip-checkpoint wav2lip.pth
    python -m modelkit.build --face-restore unsharp  # adds the analytic face restorer
    python -m modelkit.build --face-restore gfpgan --gfpgan-checkpoint GFPGANv1.4.pth

The lipsync model's config.pbtxt is rewritten to match what was built: the face size S in
its `face`/`pred` dims (the orchestrator reads S from Triton at start-up) and the
`composite` parameter that tells the orchestrator how to paste the face back ("replace"
for generators, "delta" for the analytic models). A checkpoint's face size is told by its
tensors; --face-size only makes the build refuse any other.

An artefact's stamp is a hash of the code that makes it, the files it reads and its
parameters; a rebuild happens only when that hash changes or the output is gone.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from tritonclient.grpc import model_config_pb2

from modelkit import reference, restore_analytic, talking
from modelkit.errors import ModelBuildError
from modelkit.repository import (
    CONFIG_NAME,
    ONNX_NAME,
    input_dims,
    model_dirs,
    onnx_path,
    read_config,
    write_config,
)

# "reference" is the analytic talking model (modelkit/talking.py), the default: a jaw that
# drops with the loudness. "grey-box" is the older analytic model (modelkit/reference.py)
# that only darkens a box over the mouth, kept as a test instrument.
LIPSYNC_SOURCES = ("reference", "grey-box", "wav2lip-random", "checkpoint")
# Seed of the random Wav2Lip weights: fixed so that benchmark figures are comparable.
WAV2LIP_SEED = 0
# The random architecture's face size unless --face-size says otherwise: Wav2Lip's own.
WAV2LIP_FACE_SIZE = 96
# Optional face restorers, served as `face_restore`; the default build makes none.
# "unsharp" is analytic (tests), "gfpgan" converts a GFPGAN v1.4 checkpoint.
FACE_RESTORE_SOURCES = ("unsharp", "gfpgan")
# The lipsync config parameter that says how the generated face goes back into the frame:
# a generator redraws the lower face, so its output replaces the masked region; the
# analytic models change only a few pixels, so their change is added (docs/models.md).
COMPOSITE_KEY = "composite"
COMPOSITE_REPLACE = "replace"
COMPOSITE_DELTA = "delta"
# Tensors of the lipsync contract whose last two dims are the face size S.
FACE_TENSORS = ("face", "pred")


@dataclass
class Artifact:
    name: str
    out: Path
    make: Callable[[Path], None]
    code: list[object]
    files: list[Path] = field(default_factory=list)
    params: dict[str, object] = field(default_factory=dict)

    def digest(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for obj in self.code:
            h.update(inspect.getsource(obj).encode())  # type: ignore[arg-type]
        for path in self.files:
            h.update(_file_sha256(path).encode())
        h.update(json.dumps(self.params, sort_keys=True, default=str).encode())
        return h.hexdigest()


def _file_sha256(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise ModelBuildError(f"{path}: file not found") from None


def build(artifact: Artifact, stamps: Path, *, log: Callable[[str], None] = print) -> bool:
    """Builds one artefact unless its stamp matches; returns whether it was built."""
    # One stamp per output file, so switching sources (reference, then Wav2Lip, then
    # reference again) always rebuilds what is really on disk.
    stamp = stamps / (re.sub(r"[^A-Za-z0-9_.-]", "_", str(artifact.out)) + ".sha256")
    digest = artifact.digest()
    if artifact.out.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        log(f"{artifact.name}: up to date ({artifact.out})")
        return False
    log(f"{artifact.name}: building {artifact.out}")
    artifact.out.parent.mkdir(parents=True, exist_ok=True)
    partial = artifact.out.with_suffix(".partial.onnx")
    artifact.make(partial)
    onnx.checker.check_model(str(partial), full_check=True)
    partial.replace(artifact.out)
    stamps.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")
    return True


@dataclass(frozen=True)
class LipsyncBuild:
    """The lipsync artefact and the config it needs: face size S and how to composite."""

    artifact: Artifact
    face_size: int
    composite: str


def lipsync_build(
    repository: Path,
    source: str,
    checkpoint: Path | None = None,
    out: Path | None = None,
    face_size: int | None = None,
) -> LipsyncBuild:
    configured = input_dims(read_config(repository / "lipsync"), "face")[-1]
    target = out or onnx_path(repository, "lipsync")
    if source in ("reference", "grey-box"):
        size = face_size or configured
        module = talking if source == "reference" else reference
        export = talking.export_talking if source == "reference" else reference.export_reference
        artifact = Artifact(
            name=f"lipsync-{'talking' if source == 'reference' else source}-{size}",
            out=target,
            make=lambda p: export(p, size),
            code=[module],
            params={"face_size": size},
        )
        return LipsyncBuild(artifact, size, COMPOSITE_DELTA)
    from modelkit import wav2lip, wav2lip_layouts  # torch is only needed for these sources

    if source == "wav2lip-random":
        size = face_size or WAV2LIP_FACE_SIZE
        layout = wav2lip_layouts.layout_for_size(size)
        artifact = Artifact(
            name=f"lipsync-{layout.name}-random",
            out=target,
            make=lambda p: wav2lip.export_wav2lip(
                wav2lip.random_generator(WAV2LIP_SEED, layout), p
            ),
            code=[wav2lip, wav2lip_layouts],
            params={"seed": WAV2LIP_SEED, "layout": layout.name},
        )
        return LipsyncBuild(artifact, layout.face_size, COMPOSITE_REPLACE)
    if source == "checkpoint":
        if checkpoint is None:
            raise ModelBuildError("--lipsync checkpoint needs --wav2lip-checkpoint PATH")
        path = checkpoint
        # Read once: the layout (hence S, which the config needs now) comes from its tensors.
        weights = wav2lip.read_generator_weights(path)
        layout = wav2lip.detect_layout(weights, path, face_size)
        artifact = Artifact(
            name=f"lipsync-{layout.name}-checkpoint",
            out=target,
            make=lambda p: wav2lip.export_wav2lip(
                wav2lip.model_from_weights(weights, layout, path), p
            ),
            code=[wav2lip, wav2lip_layouts],
            files=[path],
            params={"layout": layout.name},
        )
        return LipsyncBuild(artifact, layout.face_size, COMPOSITE_REPLACE)
    raise ModelBuildError(f"unknown lipsync source '{source}'; one of {', '.join(LIPSYNC_SOURCES)}")


def lipsync_artifact(
    repository: Path,
    source: str,
    checkpoint: Path | None = None,
    out: Path | None = None,
    face_size: int | None = None,
) -> Artifact:
    return lipsync_build(repository, source, checkpoint, out, face_size).artifact


def lipsync_config(
    config: model_config_pb2.ModelConfig, face_size: int, composite: str
) -> model_config_pb2.ModelConfig:
    """`config` with the face size S in every face/pred dims (warm-up included) and the
    composite parameter set; everything else (batching, instances, queue) kept."""
    updated = model_config_pb2.ModelConfig()
    updated.CopyFrom(config)
    for tensor in (*updated.input, *updated.output):
        if tensor.name in FACE_TENSORS:
            tensor.dims[-2:] = [face_size, face_size]
    for warmup in updated.model_warmup:
        for name, data in warmup.inputs.items():
            if name in FACE_TENSORS:
                data.dims[-2:] = [face_size, face_size]
    updated.parameters[COMPOSITE_KEY].string_value = composite
    return updated


def configure_lipsync(model_dir: Path, face_size: int, composite: str) -> bool:
    """Rewrites the lipsync config.pbtxt to match the built model; returns whether it
    changed. An unchanged config is left as it is, comments included."""
    config = read_config(model_dir)
    updated = lipsync_config(config, face_size, composite)
    if updated == config:
        return False
    write_config(updated, model_dir)
    text = (model_dir / CONFIG_NAME).read_text()
    (model_dir / CONFIG_NAME).write_text(
        f"# Written by modelkit.build for a {face_size} px lipsync model ({composite}).\n"
        "# docs/models.md says what each tensor holds.\n" + text
    )
    return True


def detector_artifact(repository: Path, downloads: Path) -> Artifact:
    from modelkit import s3fd

    weights = s3fd.fetch_weights(downloads)
    return Artifact(
        name="face_detector-s3fd",
        out=onnx_path(repository, "face_detector"),
        make=lambda p: s3fd.export_s3fd(weights, p),
        code=[s3fd],
        files=[weights],
    )


def face_restore_artifact(
    repository: Path, source: str, checkpoint: Path | None = None
) -> Artifact:
    """The restorer's model.onnx (its config.pbtxt is written after it by
    `build_face_restore`: the model is optional, and its size depends on the source)."""
    if source not in FACE_RESTORE_SOURCES:
        raise ModelBuildError(
            f"unknown face restorer '{source}'; one of {', '.join(FACE_RESTORE_SOURCES)}"
        )
    if source == "unsharp":
        return Artifact(
            name="face_restore-unsharp",
            out=onnx_path(repository, restore_analytic.MODEL_NAME),
            make=restore_analytic.export_unsharp,
            code=[restore_analytic],
        )
    if checkpoint is None:
        raise ModelBuildError("--face-restore gfpgan needs --gfpgan-checkpoint PATH")
    from modelkit import gfpgan  # torch is only needed for the converted restorers

    return Artifact(
        name="face_restore-gfpgan-v1.4",
        out=onnx_path(repository, gfpgan.MODEL_NAME),
        make=lambda p: gfpgan.export_gfpgan(gfpgan.load_checkpoint(checkpoint), p),
        code=[gfpgan],
        files=[checkpoint],
    )


def build_face_restore(
    repository: Path, source: str, checkpoint: Path | None, stamps: Path, log: Callable[[str], None]
) -> None:
    """The face_restore model and then its config, so Triton never sees a config alone."""
    build(face_restore_artifact(repository, source, checkpoint), stamps, log=log)
    if source == "unsharp":
        write_config(
            restore_analytic.face_restore_config(), repository / restore_analytic.MODEL_NAME
        )
    else:
        from modelkit import gfpgan

        write_config(gfpgan.triton_config(), repository / gfpgan.MODEL_NAME)


def build_repository(
    repository: Path,
    *,
    lipsync: str = "reference",
    checkpoint: Path | None = None,
    face_restore: str | None = None,
    gfpgan_checkpoint: Path | None = None,
    face_size: int | None = None,
    work: Path = Path("build"),
    log: Callable[[str], None] = print,
) -> None:
    if gfpgan_checkpoint is not None and face_restore is None:
        raise ModelBuildError("--gfpgan-checkpoint is only read with --face-restore gfpgan")
    build_lipsync(repository, lipsync, checkpoint, face_size=face_size, work=work, log=log)
    build(detector_artifact(repository, work / "downloads"), work / "stamps", log=log)
    if face_restore is not None:
        build_face_restore(repository, face_restore, gfpgan_checkpoint, work / "stamps", log)


def build_lipsync(
    repository: Path,
    source: str,
    checkpoint: Path | None = None,
    *,
    face_size: int | None = None,
    work: Path = Path("build"),
    log: Callable[[str], None] = print,
) -> LipsyncBuild:
    """Builds repository/lipsync/1/model.onnx and makes its config.pbtxt match it."""
    plan = lipsync_build(repository, source, checkpoint, face_size=face_size)
    build(plan.artifact, work / "stamps", log=log)
    if configure_lipsync(repository / "lipsync", plan.face_size, plan.composite):
        log(f"lipsync: config.pbtxt now serves {plan.face_size} px faces ({plan.composite})")
    return plan


def repository_with_wav2lip(source: Path, target: Path, work: Path, model_name: str) -> Path:
    """`target`: the models of `source` plus `model_name`, the same lipsync config serving
    the Wav2Lip-96 architecture with random weights, so tests and benchmarks can run both
    generators on one server."""
    target.mkdir(parents=True, exist_ok=True)
    for model_dir in model_dirs(source):
        link = target / model_dir.name
        if not link.exists():
            link.symlink_to(model_dir.resolve())
    onnx_file = work / "models" / "wav2lip96-random.onnx"
    build(
        lipsync_artifact(source, "wav2lip-random", out=onnx_file, face_size=WAV2LIP_FACE_SIZE),
        work / "stamps",
        log=lambda _: None,
    )
    config = lipsync_config(read_config(source / "lipsync"), WAV2LIP_FACE_SIZE, COMPOSITE_REPLACE)
    config.name = model_name
    write_config(config, target / model_name)
    version = target / model_name / "1"
    version.mkdir(exist_ok=True)
    (version / ONNX_NAME).unlink(missing_ok=True)
    (version / ONNX_NAME).symlink_to(onnx_file.resolve())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-models", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--work", type=Path, default=Path("build"), help="downloads and stamps")
    parser.add_argument("--lipsync", choices=LIPSYNC_SOURCES, default="reference")
    parser.add_argument("--wav2lip-checkpoint", type=Path)
    parser.add_argument("--face-restore", choices=FACE_RESTORE_SOURCES)
    parser.add_argument("--gfpgan-checkpoint", type=Path, help="GFPGAN v1.4 .pth")
    parser.add_argument(
        "--face-size",
        type=int,
        help="face crop side S; a checkpoint's own is read from its tensors (this checks it)",
    )
    args = parser.parse_args(argv)
    try:
        build_repository(
            args.repository,
            lipsync=args.lipsync,
            checkpoint=args.wav2lip_checkpoint,
            face_restore=args.face_restore,
            gfpgan_checkpoint=args.gfpgan_checkpoint,
            face_size=args.face_size,
            work=args.work,
        )
    except ModelBuildError as exc:
        print(f"build-models: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
