"""Model only, for every generator size: frames/s on the local Triton and FLOPs per frame.

    python -m benchmarks.models [--frames N] [--rounds R] [--batch B] [--in-flight K]
                                [--sizes 96,192,256,288,384]

Builds each Wav2Lip layout with random weights (the real model's compute: the weights do
not change the arithmetic), serves them all from one local CPU Triton beside the face
restorer when model_repository/face_restore exists, and sends each model the same load:
`--in-flight` requests of `--batch` frames outstanding, `--frames` frames in all, after
one warm-up request. Each figure is the best of `--rounds` rounds, and a round measures
every model in turn, so a burst of load from other processes lands on one round of every
model rather than on all rounds of one. FLOPs per frame count the Conv and ConvTranspose
nodes of the ONNX graph (benchmarks/flops.py). It prints a table, then one JSON line with
every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from benchmarks.common import REPO
from benchmarks.flops import conv_macs
from localtriton.launcher import local_triton
from modelkit.build import COMPOSITE_REPLACE, build, lipsync_artifact, lipsync_config
from modelkit.repository import ONNX_NAME, read_config, write_config
from modelkit.wav2lip_layouts import FACE_SIZES, layout_for_size
from orchestrator.triton import ModelSpec, TritonClient

SOURCE = REPO / "model_repository"
RESTORER = "face_restore"
# Defaults: on two shared cores the 384 px generator takes about a second per frame, so
# 32 frames per model keep the whole run to a few minutes.
DEFAULT_FRAMES = 32
DEFAULT_BATCH = 8
DEFAULT_IN_FLIGHT = 2
DEFAULT_ROUNDS = 2
# One CPU instance per model: the models are measured one after another, and more
# instances would only split the same cores.
CPU_INSTANCES = 1
READY_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ModelFigure:
    model: str
    face_size: int | None
    params_m: float
    gflops_per_frame: float | None  # Conv/ConvTranspose only; None: shapes not static
    cpu_fps: float | None  # None: not measured (the reason is in `note`)
    note: str = ""


def generator_onnx(face_size: int) -> Path:
    """The random-weight ONNX of the layout for `face_size`, built once and kept in build/."""
    layout = layout_for_size(face_size)
    out = REPO / "build" / "models" / f"{layout.name}-random.onnx"
    artifact = lipsync_artifact(SOURCE, "wav2lip-random", out=out, face_size=face_size)
    build(artifact, REPO / "build" / "stamps", log=lambda _: None)
    return out


def parameters_m(onnx_file: Path) -> float:
    model = onnx.load(str(onnx_file), load_external_data=False)
    count: int = sum(math.prod(init.dims) for init in model.graph.initializer)
    return count / 1e6


def benchmark_repository(target: Path, generators: dict[int, Path]) -> dict[int, str]:
    """`target` holding one lipsync model per face size (the production config at that
    size) and the face restorer when the production repository has one; returns the
    model name of each size."""
    names = {}
    for face_size, onnx_file in generators.items():
        name = f"lipsync_{layout_for_size(face_size).name}"
        config = lipsync_config(read_config(SOURCE / "lipsync"), face_size, COMPOSITE_REPLACE)
        config.name = name
        # Our own warm-up request replaces the config's: five warm-ups of 16 frames at
        # start-up would cost minutes on a CPU.
        config.ClearField("model_warmup")
        write_config(config, target / name)
        (target / name / "1").mkdir(exist_ok=True)
        (target / name / "1" / ONNX_NAME).symlink_to(onnx_file.resolve())
        names[face_size] = name
    if (SOURCE / RESTORER / "1" / ONNX_NAME).is_file():
        (target / RESTORER).symlink_to((SOURCE / RESTORER).resolve())
    return names


def random_inputs(spec: ModelSpec, batch: int) -> dict[str, np.ndarray] | None:
    """Inputs in [0, 1] of every declared shape (the mel in [-4, 4]); None when a shape is
    not fixed and the load would be a guess."""
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in spec.inputs.values():
        if any(d <= 0 for d in tensor.shape) or tensor.datatype != "FP32":
            return None
        low, high = (-4.0, 4.0) if tensor.name == "mel" else (0.0, 1.0)
        inputs[tensor.name] = rng.uniform(low, high, (batch, *tensor.shape)).astype(np.float32)
    return inputs


async def saturated_fps(
    client: TritonClient,
    spec: ModelSpec,
    inputs: dict[str, np.ndarray],
    in_flight: int,
    frames: int,
) -> float:
    """Frames/s with `in_flight` requests outstanding, after one warm-up request."""
    outputs = list(spec.outputs)
    batch: int = next(iter(inputs.values())).shape[0]
    await client.infer(spec.name, inputs, outputs)
    requests = max(in_flight, -(-frames // batch))
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots:
            await client.infer(spec.name, inputs, outputs)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(requests):
            group.create_task(one())
    return requests * batch / (time.perf_counter() - started)


async def measure(
    url: str,
    models: list[tuple[str, int | None, Path]],
    batch: int,
    in_flight: int,
    frames: int,
    rounds: int,
) -> list[ModelFigure]:
    # A 384 px batch takes seconds on a CPU: the deadline is the benchmark's, not the service's.
    async with TritonClient(
        url, request_timeout_s=READY_TIMEOUT_S, max_in_flight=in_flight
    ) as client:
        await client.wait_ready([name for name, _, _ in models], READY_TIMEOUT_S)
        specs = {name: await client.model_spec(name) for name, _, _ in models}
        loads = {
            name: random_inputs(spec, min(batch, spec.max_batch_size or 1))
            for name, spec in specs.items()
        }
        best: dict[str, float] = {}
        for round_ in range(rounds):
            for name, _, _ in models:
                inputs = loads[name]
                if inputs is None:
                    continue
                fps = await saturated_fps(client, specs[name], inputs, in_flight, frames)
                best[name] = max(fps, best.get(name, 0.0))
                print(f"[models] round {round_ + 1}: {name} {fps:.2f} frames/s", file=sys.stderr)
    figures = []
    for name, face_size, onnx_file in models:
        static = loads[name] is not None
        figures.append(
            ModelFigure(
                model=name,
                face_size=face_size,
                params_m=round(parameters_m(onnx_file), 2),
                gflops_per_frame=round(2 * conv_macs(onnx_file) / 1e9, 2) if static else None,
                cpu_fps=round(best[name], 2) if static else None,
                note="" if static else "inputs not fixed-shape FP32: not measured",
            )
        )
    return figures


def render_table(figures: list[ModelFigure]) -> str:
    lines = [
        "| model | face | params (M) | GFLOP/frame | CPU frames/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        lines.append(
            f"| {f.model} | {f.face_size or '-'} | {f.params_m} | {f.gflops_per_frame or '-'} "
            f"| {f.cpu_fps or f.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.models", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames per model")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="best of")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT)
    parser.add_argument(
        "--sizes", default=",".join(map(str, FACE_SIZES)), help="generator face sizes"
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    generators = {size: generator_onnx(size) for size in sizes}
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = Path(tmp)
        names = benchmark_repository(work / "model_repository", generators)
        models: list[tuple[str, int | None, Path]] = [
            (names[size], size, generators[size]) for size in sizes
        ]
        if (work / "model_repository" / RESTORER).exists():
            models.append((RESTORER, None, SOURCE / RESTORER / "1" / ONNX_NAME))
        with local_triton(
            work / "model_repository",
            work / "triton",
            REPO / ".venv-triton",
            cpu_instances=CPU_INSTANCES,
            log=lambda line: print(f"[models] {line}", file=sys.stderr),
        ) as running:
            figures = asyncio.run(
                measure(
                    running.endpoints.grpc_url,
                    models,
                    args.batch,
                    args.in_flight,
                    args.frames,
                    args.rounds,
                )
            )
    print(render_table(figures))
    print(
        json.dumps(
            {
                "cpu_cores": os.cpu_count(),
                # Other processes' load over the last minute: the CPU rates are shares of it.
                "load_average_1m": round(os.getloadavg()[0], 2),
                "batch": args.batch,
                "in_flight": args.in_flight,
                "frames": args.frames,
                "rounds": args.rounds,
                "restorer": RESTORER if len(models) > len(sizes) else None,
                "models": [asdict(f) for f in figures],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
