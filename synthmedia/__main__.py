"""`python -m synthmedia demo OUTDIR [--seconds 6]`: an avatar video and speech for the demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthmedia.audio import write_speech
from synthmedia.avatar import write_avatar_video

# The demo avatar: long enough to show the ping-pong walk when the speech is longer.
DEMO_AVATAR_SECONDS = 4.0
DEMO_FPS = 25
DEMO_SIZE = (384, 384)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthmedia", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="write OUTDIR/avatar.mp4 and OUTDIR/speech.wav")
    demo.add_argument("outdir", type=Path)
    demo.add_argument("--seconds", type=float, default=6.0, help="length of the speech")
    args = parser.parse_args(argv)

    args.outdir.mkdir(parents=True, exist_ok=True)
    avatar = args.outdir / "avatar.mp4"
    speech = args.outdir / "speech.wav"
    write_avatar_video(avatar, seconds=DEMO_AVATAR_SECONDS, fps=DEMO_FPS, size=DEMO_SIZE)
    source = write_speech(speech, args.seconds)
    print(f"avatar: {avatar}")
    print(f"speech: {speech} ({source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
