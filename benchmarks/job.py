"""One job in this process, printing its figures as JSON: wall time, fps, peak RSS."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings


def _peak_rss_mib() -> float:
    """This process's own high-water mark. Not ru_maxrss: Linux carries that across exec,
    so a child spawned by a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError("no VmHWM in /proc/self/status")


async def _run(avatar: Path, audio: Path, out: Path) -> dict[str, float]:
    async with Engine(Settings()) as engine:
        result = await engine.generate(avatar, audio, out)
    return {
        "frames": result.frames,
        "audio_seconds": result.audio_seconds,
        "wall_seconds": result.wall_seconds,
        "fps": result.frames / result.wall_seconds,
        "peak_rss_mib": _peak_rss_mib(),
        **{f"{k}_seconds": v for k, v in result.stage_seconds.items()},
    }


if __name__ == "__main__":
    avatar, audio, out = (Path(arg) for arg in sys.argv[1:4])
    print(json.dumps(asyncio.run(_run(avatar, audio, out))))
