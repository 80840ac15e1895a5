"""One job in this process, printing its figures as JSON: wall time, fps, peak RSS."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from pathlib import Path

from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings


async def _run(avatar: Path, audio: Path, out: Path) -> dict[str, float]:
    async with Engine(Settings()) as engine:
        result = await engine.generate(avatar, audio, out)
    return {
        "frames": result.frames,
        "audio_seconds": result.audio_seconds,
        "wall_seconds": result.wall_seconds,
        "fps": result.frames / result.wall_seconds,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{f"{k}_seconds": v for k, v in result.stage_seconds.items()},
    }


if __name__ == "__main__":
    avatar, audio, out = (Path(arg) for arg in sys.argv[1:4])
    print(json.dumps(asyncio.run(_run(avatar, audio, out))))
