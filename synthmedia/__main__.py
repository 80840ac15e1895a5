"""Synthetic media from the command line.

python -m synthmedia demo OUTDIR [--seconds 6]          the demo's avatar and speech
python -m synthmedia contact-sheet VIDEO OUT.png        frames and enlarged mouths
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av

from synthmedia.audio import write_speech
from synthmedia.avatar import mouth_region, write_avatar_video
from synthmedia.contact_sheet import write_contact_sheet

# The demo avatar: long enough to show the ping-pong walk when the speech is longer.
DEMO_AVATAR_SECONDS = 4.0
DEMO_FPS = 25
DEMO_SIZE = (384, 384)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synthmedia",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="write OUTDIR/avatar.mp4 and OUTDIR/speech.wav")
    demo.add_argument("outdir", type=Path)
    demo.add_argument("--seconds", type=float, default=6.0, help="length of the speech")
    sheet = commands.add_parser(
        "contact-sheet", help="write a PNG of frames across VIDEO, each mouth enlarged"
    )
    sheet.add_argument("video", type=Path)
    sheet.add_argument("out", type=Path)
    sheet.add_argument("--frames", type=int, default=12)
    sheet.add_argument("--columns", type=int, default=6)
    sheet.add_argument(
        "--region",
        type=_region,
        help="x,y,width,height to enlarge; default: the demo avatar's mouth",
    )
    args = parser.parse_args(argv)
    if args.command == "contact-sheet":
        return _contact_sheet(args)

    args.outdir.mkdir(parents=True, exist_ok=True)
    avatar = args.outdir / "avatar.mp4"
    speech = args.outdir / "speech.wav"
    write_avatar_video(avatar, seconds=DEMO_AVATAR_SECONDS, fps=DEMO_FPS, size=DEMO_SIZE)
    source = write_speech(speech, args.seconds)
    print(f"avatar: {avatar}")
    print(f"speech: {speech} ({source})")
    return 0


def _region(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, width, height = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x,y,width,height, got {text!r}") from None
    return x, y, width, height


def _contact_sheet(args: argparse.Namespace) -> int:
    try:
        with av.open(str(args.video)) as container:
            stream = container.streams.video[0]
            size = (stream.width, stream.height)
        region = args.region or mouth_region(size)
        width, height = write_contact_sheet(
            args.video, args.out, region, frames=args.frames, columns=args.columns
        )
    except (OSError, av.FFmpegError, ValueError, IndexError) as exc:
        # IndexError: the file has no video stream.
        print(f"contact-sheet: {args.video}: {exc}", file=sys.stderr)
        return 2
    print(f"contact sheet: {args.out} ({width}x{height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
