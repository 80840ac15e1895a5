"""`dh`: the command line of the service.

Exit status: 0 success, 2 bad input, 1 internal fault; failures print one line that names
the stage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from orchestrator.errors import BadInput, PipelineError, describe
from orchestrator.pipeline.faces import DEFAULT_CHOICE, FaceChoice
from orchestrator.pipeline.runner import Engine
from orchestrator.progress import ProgressBar, summary
from orchestrator.settings import Settings

# Probe inputs: a quiet mel window (Wav2Lip's floor is -4) and a mid-grey face stack.
PROBE_MEL_LEVEL = -2.0
PROBE_GREY = 0.5
PROBE_FRAME_SIDE = 256


async def probe(settings: Settings) -> None:
    """One inference through each model; prints what came back."""
    async with Engine(settings) as engine:
        served, client = engine.served, engine.client
        gpus = ", ".join(g.name for g in engine.gpus.gpus) or f"none ({engine.gpus.nvml})"
        print(f"GPUs: {gpus}")
        for spec in served.specs:
            groups = ", ".join(f"{g.count}x{g.kind}" for g in spec.instance_groups)
            print(
                f"{spec.name}: {spec.platform}, max batch {spec.max_batch_size}, "
                f"instances {groups}, preferred batches {list(spec.preferred_batch_sizes)}"
            )
        print(f"{served.lipsync.name}: composite {served.composite.value}")
        if served.face_restore is None:
            print(f"face restoration: unavailable ({served.restore_unavailable})")
        s = served.face_size
        mel = np.full((1, 1, 80, 16), PROBE_MEL_LEVEL, np.float32)
        face = np.full((1, 6, s, s), PROBE_GREY, np.float32)
        pred = (await client.infer(served.lipsync.name, {"mel": mel, "face": face}, ["pred"]))[
            "pred"
        ]
        print(
            f"{served.lipsync.name}: pred {list(pred.shape)} {pred.dtype}, "
            f"min {pred.min():.3f} mean {pred.mean():.3f} max {pred.max():.3f}"
        )
        image = np.zeros((1, 3, PROBE_FRAME_SIDE, PROBE_FRAME_SIDE), np.float32)
        detected = await client.infer(served.detector.name, {"image": image}, ["boxes", "scores"])
        scores = detected["scores"][0]
        faces = int((scores > settings.face_score_threshold).sum())
        print(
            f"{served.detector.name}: {detected['boxes'].shape[1]} prior boxes, best face score "
            f"{scores.max():.3f} on a flat frame ({faces} above threshold)"
        )


def face_choice(text: str) -> FaceChoice:
    """--face as argparse takes it: a bad value is a usage error (exit status 2)."""
    try:
        return FaceChoice.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def generate(
    settings: Settings, avatar: Path, audio: Path, out: Path, face: FaceChoice = DEFAULT_CHOICE
) -> None:
    bar = ProgressBar()
    try:
        async with Engine(settings) as engine:
            result = await engine.generate(avatar, audio, out, on_progress=bar, face=face)
    finally:
        bar.close()
    print(summary(result))


async def prepare(settings: Settings, video: Path) -> None:
    async with Engine(settings) as engine:
        avatar = await engine.prepare_avatar(video)
    print(json.dumps({**avatar.summary(), "directory": str(avatar.directory)}, indent=2))


async def _preflight(settings: Settings, needs: tuple[str, ...]) -> None:
    from orchestrator.dependencies import TRITON
    from orchestrator.jobs.store import open_store
    from orchestrator.storage import check_storage

    # The job store first (one line naming it and where if unreachable), then Triton.
    store = await open_store(settings)
    await store.close()
    # Object storage (DH_STORAGE_URL): one line naming the bucket and endpoint, never keys.
    await check_storage(settings)
    if TRITON in needs:  # only a role that renders waits for Triton
        async with Engine(settings):
            pass


# Largest request line plus headers uvicorn buffers (h11's own default, stated): a client
# cannot make the server hold more for one request before the body starts.
MAX_HEADER_BYTES = 16 * 1024


def serve(settings: Settings, verb: str = "serve") -> None:
    """One role of the service under uvicorn (`verb`: serve, api or worker, see
    orchestrator.roles); SIGINT/SIGTERM stop it gracefully."""
    import ipaddress

    import uvicorn

    from orchestrator.api.app import create_app
    from orchestrator.api.connections import bounded_protocol
    from orchestrator.logs import configure_logging
    from orchestrator.roles import API, SERVE, WORKER, ApiRole, needs

    roles = {"serve": SERVE, "api": API, "worker": WORKER}[verb]
    # First, before anything starts: an open port with no key is anyone's GPU. (A worker
    # alone answers only the probes and /metrics, which need no key anywhere.)
    host = settings.host.strip().strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost, or "": not known to stay local
        loopback = False
    if ApiRole in roles and not (loopback or settings.api_key or settings.trusted_network):
        raise BadInput(
            verb,
            f"refusing to listen on {settings.host or 'every address'} without an API key: "
            "set DH_API_KEY, or DH_TRUSTED_NETWORK=true if only trusted clients can reach it",
        )
    configure_logging(settings.log_json)
    # The store, object storage and (where the role renders) Triton, the models'
    # contracts and the GPU guard are checked before uvicorn starts: a misconfigured host
    # then fails with one line, not a lifespan traceback.
    asyncio.run(_preflight(settings, needs(roles)))
    uvicorn.run(
        create_app(settings, roles),
        host=settings.host,
        port=settings.worker_port if roles == WORKER else settings.port,
        log_config=None,  # uvicorn's loggers go through the handler configured above
        timeout_keep_alive=settings.keep_alive_s,
        # Silent connections are closed at the head deadline; the concurrency bound counts
        # requests being answered (InFlightLimit), not connections (orchestrator.api.connections).
        http=bounded_protocol(settings.header_timeout_s, MAX_HEADER_BYTES),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dh", description="Lip-synced digital-human video")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("probe", help="check both models on Triton and run one inference each")
    gen = sub.add_parser("generate", help="render a lip-synced MP4")
    gen.add_argument("--avatar", type=Path, required=True, help="avatar video")
    gen.add_argument("--audio", type=Path, required=True, help="speech track (any format)")
    gen.add_argument("-o", "--output", type=Path, required=True, help="the MP4 to write")
    gen.add_argument(
        "--face",
        type=face_choice,
        default=DEFAULT_CHOICE,
        metavar="largest|K|X,Y",
        help="the face to animate: the largest (default), the K-th from the left, or the one "
        "at pixel X,Y, in the first frame where faces are found",
    )
    sub.add_parser(
        "serve", help="run the REST service and render its jobs, one process (DH_HOST, DH_PORT)"
    )
    sub.add_parser(
        "api",
        help="admit jobs and answer; render nothing (DH_HOST, DH_PORT; workers render)",
    )
    sub.add_parser(
        "worker",
        help="claim queued jobs and render them, prepare avatars; "
        "/healthz, /readyz, /metrics on DH_HOST, DH_WORKER_PORT",
    )
    avatar = sub.add_parser("avatar", help="avatar commands")
    avatar_sub = avatar.add_subparsers(dest="avatar_verb", required=True)
    prep = avatar_sub.add_parser("prepare", help="detect and cache face boxes for a video")
    prep.add_argument("video", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="dh: %(levelname)s: %(message)s")
    try:
        settings = Settings()
    except ValidationError as exc:
        for problem in exc.errors():
            where = ".".join(str(part) for part in problem["loc"])
            name = f"DH_{where.upper()}: " if where else ""
            reason = str(problem["msg"]).removeprefix("Value error, ")
            print(f"dh: settings: {name}{reason}", file=sys.stderr)
        return 2
    try:
        if args.verb == "probe":
            asyncio.run(probe(settings))
        elif args.verb == "generate":
            asyncio.run(generate(settings, args.avatar, args.audio, args.output, args.face))
        elif args.verb == "avatar":
            asyncio.run(prepare(settings, args.video))
        elif args.verb in ("serve", "api", "worker"):
            serve(settings, args.verb)
    except BadInput as exc:
        print(f"dh: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"dh: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dh: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: one line here, the traceback in the log
        logging.getLogger(__name__).debug("internal fault", exc_info=True)
        print(f"dh: internal fault: {describe(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
