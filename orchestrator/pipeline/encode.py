"""encode: H.264 (yuv420p) and AAC into an MP4, written as frames arrive, with +faststart.

The speech track is decoded again from the original file and muxed beside the video,
interleaved by time. Output goes to a partial file that is renamed only on success, so a
failed or cancelled job never leaves a half-written MP4 behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from orchestrator.errors import BadInput
from orchestrator.pipeline.stages import END, StageClock

STAGE = "encode"
log = logging.getLogger(__name__)

NVENC = "h264_nvenc"
X264 = "libx264"
# Quality/speed of libx264: CRF 20 is visually lossless for talking heads; "veryfast"
# keeps encoding well ahead of inference on a few cores.
X264_OPTIONS = {"crf": "20", "preset": "veryfast"}
# AAC in MP4 supports these rates; anything else is resampled to 48 kHz.
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_BITRATE = 128_000


def pick_encoder(requested: str) -> str:
    """`requested` if this PyAV build can open it here, else libx264 with one warning."""
    if requested == X264:
        return X264
    try:
        codec = av.codec.Codec(requested, "w")
        context = av.codec.CodecContext.create(codec)
        context.width, context.height, context.pix_fmt = 64, 64, "yuv420p"
        context.time_base = Fraction(1, 25)
        context.open()
    except (av.FFmpegError, ValueError) as exc:
        log.warning("video encoder %s is not usable here (%s); using %s", requested, exc, X264)
        return X264
    return requested


class Mp4Writer:
    """One MP4 being written: video frames in, audio pulled along to keep pace."""

    def __init__(
        self, out: Path, width: int, height: int, fps: Fraction, audio: Path, codec: str
    ) -> None:
        self.out = out
        self.partial = out.with_name(f".{out.name}.partial")
        self.fps = fps
        # H.264 in yuv420p needs even sides; one replicated edge row or column is added.
        self.width, self.height = width + width % 2, height + height % 2
        self.frames = 0
        self._container = av.open(
            str(self.partial), "w", format="mp4", options={"movflags": "+faststart"}
        )
        try:
            video = self._container.add_stream(codec, rate=fps)
            video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
            if codec == X264:
                video.options = X264_OPTIONS
            video.codec_context.time_base = 1 / fps
            self._video = video
            self._source = av.open(str(audio), "r")
            source_stream = self._source.streams.audio[0]
            rate = source_stream.rate if source_stream.rate in AAC_RATES else 48000
            layout = "mono" if source_stream.channels == 1 else "stereo"
            self._audio = self._container.add_stream("aac", rate=rate, layout=layout)
            self._audio.bit_rate = AAC_BITRATE
            self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
            self._audio_frames = self._decoded_audio(source_stream)
            self._audio_seconds = 0.0
        except BaseException:
            self.abort()
            raise

    def _decoded_audio(self, stream: av.AudioStream) -> Iterator[av.AudioFrame]:
        # Timestamps counted in samples from zero: the AAC encoder then shifts its priming
        # samples before zero and the MP4 muxer writes an edit list that hides them, so the
        # audio lasts as long as the source instead of 64 ms more.
        samples = 0
        time_base = Fraction(1, self._audio.rate)
        try:
            for frame in self._source.decode(stream):
                frame.pts = None
                for out in self._resampler.resample(frame):
                    out.pts, out.time_base = samples, time_base
                    samples += out.samples
                    yield out
            for out in self._resampler.resample(None):
                out.pts, out.time_base = samples, time_base
                samples += out.samples
                yield out
        except av.FFmpegError as exc:
            raise BadInput(STAGE, f"audio {Path(self._source.name).name}: {exc}") from None

    def _mux_audio_until(self, seconds: float | None) -> None:
        while seconds is None or self._audio_seconds < seconds:
            frame = next(self._audio_frames, None)
            if frame is None:
                return
            self._audio_seconds += frame.samples / frame.sample_rate
            self._container.mux(self._audio.encode(frame))

    def write(self, frame: np.ndarray) -> None:
        pad_bottom, pad_right = self.height - frame.shape[0], self.width - frame.shape[1]
        if pad_bottom or pad_right:
            frame = cv2.copyMakeBorder(frame, 0, pad_bottom, 0, pad_right, cv2.BORDER_REPLICATE)
        video_frame = av.VideoFrame.from_ndarray(frame, format="bgr24")
        video_frame.pts = self.frames
        video_frame.time_base = 1 / self.fps
        self._container.mux(self._video.encode(video_frame))
        self.frames += 1
        self._mux_audio_until(float(self.frames / self.fps))

    def finish(self) -> Path:
        self._mux_audio_until(None)
        self._container.mux(self._audio.encode(None))
        self._container.mux(self._video.encode(None))
        self._container.close()
        self._source.close()
        self.partial.replace(self.out)
        return self.out

    def abort(self) -> None:
        for closeable in (getattr(self, "_source", None), self._container):
            if closeable is not None:
                try:
                    closeable.close()
                except av.FFmpegError as exc:
                    log.debug("closing %s after a failure: %s", self.partial, exc)
        self.partial.unlink(missing_ok=True)


async def encode(
    source: asyncio.Queue[np.ndarray | None],
    writer: Mp4Writer,
    pool: Executor,
    clock: StageClock,
    on_frame: Callable[[int], None],
) -> Path:
    while (frame := await source.get()) is not END:
        await clock.run(STAGE, pool, writer.write, frame)
        on_frame(writer.frames)
    return await clock.run(STAGE, pool, writer.finish)
