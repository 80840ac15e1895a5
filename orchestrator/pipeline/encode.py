"""encode: H.264 (yuv420p) and AAC into an MP4, written as frames arrive, with +faststart.

The speech track is decoded again from the original file and muxed beside the video,
interleaved by time. Output goes to a partial file that is renamed only on success, so a
failed or cancelled job never leaves a half-written MP4 behind. A job may ask for a
visible watermark (text or an image, in a corner): its overlay is rendered once when the
writer opens and blended into every frame written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from orchestrator.errors import BadInput, PipelineError
from orchestrator.files import Partial
from orchestrator.pipeline.stages import END, StageClock
from orchestrator.settings import Settings

STAGE = "encode"
log = logging.getLogger(__name__)

NVENC = "h264_nvenc"
X264 = "libx264"
# AAC in MP4 supports these rates; anything else is resampled to 48 kHz.
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_BITRATE = 128_000

# Watermark geometry, as shares of the frame: text about 1/18 of the height tall, an
# image at most a quarter of either side, a margin of 1/40 of the shorter side.
WATERMARK_TEXT_HEIGHT = 1 / 18
WATERMARK_MIN_TEXT_PX = 8  # smaller Hershey glyphs are unreadable
WATERMARK_MAX_SHARE = 0.25
WATERMARK_TEXT_MAX_WIDTH = 0.9
WATERMARK_MARGIN = 1 / 40
WATERMARK_TEXT_OPACITY = 0.85  # visible, yet the picture shows through
WATERMARK_FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK = 255, 0


@dataclass(frozen=True)
class Watermark:
    """What a job's watermark shows (DH_WATERMARK_*): an image if set, else the text."""

    text: str
    image: Path | None = None
    corner: str = "bottom-right"

    @classmethod
    def from_settings(cls, settings: Settings) -> Watermark:
        return cls(settings.watermark_text, settings.watermark_image, settings.watermark_position)


@dataclass(frozen=True)
class Overlay:
    """A watermark rendered for one frame size: colour and opacity at a position."""

    top: int
    left: int
    bgr: np.ndarray  # float32 h×w×3
    alpha: np.ndarray  # float32 h×w×1 in [0, 1]


def apply_watermark(frame: np.ndarray, overlay: Overlay) -> np.ndarray:
    """`frame` (BGR uint8) with `overlay` blended in; the input frame is not modified."""
    height, width = frame.shape[:2]
    bottom = min(height, overlay.top + overlay.alpha.shape[0])
    right = min(width, overlay.left + overlay.alpha.shape[1])
    if bottom <= overlay.top or right <= overlay.left:
        return frame
    rows, cols = bottom - overlay.top, right - overlay.left
    region = frame[overlay.top : bottom, overlay.left : right].astype(np.float32)
    alpha, bgr = overlay.alpha[:rows, :cols], overlay.bgr[:rows, :cols]
    marked = frame.copy()
    marked[overlay.top : bottom, overlay.left : right] = np.clip(
        region + (bgr - region) * alpha + 0.5, 0, 255
    ).astype(np.uint8)
    return marked


def watermark_overlay(watermark: Watermark, width: int, height: int) -> Overlay:
    """The watermark rendered once for frames of `width`×`height`, placed in its corner."""
    if watermark.image is not None:
        bgr, alpha = _image_overlay(watermark.image, width, height)
    else:
        bgr, alpha = _text_overlay(watermark.text, width, height)
    rows, cols = alpha.shape[:2]
    margin = max(1, round(min(width, height) * WATERMARK_MARGIN))
    top = margin if watermark.corner.startswith("top") else max(0, height - rows - margin)
    left = margin if watermark.corner.endswith("left") else max(0, width - cols - margin)
    return Overlay(top, left, bgr.astype(np.float32), alpha.astype(np.float32)[..., None])


def _text_overlay(text: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """White text with a dark outline, so it reads on light and dark pictures."""
    pixels = max(WATERMARK_MIN_TEXT_PX, round(height * WATERMARK_TEXT_HEIGHT))
    thickness = max(1, pixels // 10)
    scale = cv2.getFontScaleFromHeight(WATERMARK_FONT, pixels, thickness)
    (text_width, _), _ = cv2.getTextSize(text, WATERMARK_FONT, scale, thickness)
    widest = width * WATERMARK_TEXT_MAX_WIDTH
    if text_width > widest:
        scale *= widest / text_width
    outline = thickness + 2
    (text_width, text_height), baseline = cv2.getTextSize(text, WATERMARK_FONT, scale, outline)
    pad = outline
    rows, cols = text_height + baseline + 2 * pad, text_width + 2 * pad
    origin = (pad, pad + text_height)
    fill = np.zeros((rows, cols), np.uint8)
    edge = np.zeros((rows, cols), np.uint8)
    cv2.putText(edge, text, origin, WATERMARK_FONT, scale, WHITE, outline, cv2.LINE_AA)
    cv2.putText(fill, text, origin, WATERMARK_FONT, scale, WHITE, thickness, cv2.LINE_AA)
    alpha = np.maximum(fill, edge).astype(np.float32) / 255 * WATERMARK_TEXT_OPACITY
    bgr = np.repeat(fill[..., None], 3, axis=2)  # white where the fill is, else black
    return bgr, alpha


def _image_overlay(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    picture = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if picture is None or picture.size == 0:
        raise PipelineError(STAGE, f"the watermark image {path} (DH_WATERMARK_IMAGE) is unreadable")
    if picture.dtype == np.uint16:
        picture = (picture // 257).astype(np.uint8)
    if picture.ndim == 2:
        picture = cv2.cvtColor(picture, cv2.COLOR_GRAY2BGRA)
    elif picture.shape[2] == 3:
        picture = cv2.cvtColor(picture, cv2.COLOR_BGR2BGRA)
    rows, cols = picture.shape[:2]
    shrink = min(1.0, width * WATERMARK_MAX_SHARE / cols, height * WATERMARK_MAX_SHARE / rows)
    if shrink < 1.0:
        size = (max(1, round(cols * shrink)), max(1, round(rows * shrink)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    return picture[..., :3], picture[..., 3].astype(np.float32) / 255


@dataclass(frozen=True)
class VideoEncoder:
    """The video codec and libx264's settings (DH_X264_PRESET, DH_X264_CRF,
    DH_ENCODE_THREADS); the defaults are the settings' own, chosen by measurement."""

    codec: str = X264
    preset: str = Settings.model_fields["x264_preset"].default
    crf: float = Settings.model_fields["x264_crf"].default
    threads: int = Settings.model_fields["encode_threads"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> VideoEncoder:
        """The encoder the settings ask for, falling back to libx264 where it cannot open."""
        codec = pick_encoder(settings.video_encoder)
        return cls(codec, settings.x264_preset, settings.x264_crf, settings.encode_threads)

    def options(self) -> dict[str, str]:
        """The codec's private options; libx264's only (h264_nvenc keeps its defaults)."""
        if self.codec != X264:
            return {}
        options = {"preset": self.preset, "crf": f"{self.crf:g}"}
        if self.threads:
            options["threads"] = str(self.threads)
        return options


def pick_encoder(requested: str) -> str:
    """`requested` if this PyAV build can open it here, else libx264 with one warning."""
    if requested == X264:
        return X264
    try:
        codec = av.codec.Codec(requested, "w")
        context = av.codec.CodecContext.create(codec)
        if not isinstance(context, av.video.codeccontext.VideoCodecContext):
            raise ValueError(f"{requested} is not a video encoder")
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
        self,
        out: Path,
        width: int,
        height: int,
        fps: Fraction,
        audio: Path,
        codec: str | VideoEncoder,
        watermark: Watermark | None = None,
    ) -> None:
        encoder = codec if isinstance(codec, VideoEncoder) else VideoEncoder(codec)
        self.out = out
        self._overlay = None if watermark is None else watermark_overlay(watermark, width, height)
        # Written under a partial name and renamed at the end: a reader of `out` never
        # finds half an MP4.
        self._file = Partial(out)
        self.fps = fps
        # H.264 in yuv420p needs even sides; one replicated edge row or column is added.
        self.width, self.height = width + width % 2, height + height % 2
        self.frames = 0
        self._container = av.open(
            str(self._file.path), "w", format="mp4", options={"movflags": "+faststart"}
        )
        try:
            video = self._container.add_stream(encoder.codec, rate=fps)
            if not isinstance(video, av.VideoStream):
                raise PipelineError(STAGE, f"{encoder.codec} is not a video encoder")
            video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
            video.options = dict[str, object](encoder.options())
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
        if self._overlay is not None:
            frame = apply_watermark(frame, self._overlay)
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
        self._file.commit()
        return self.out

    def abort(self) -> None:
        for closeable in (getattr(self, "_source", None), self._container):
            if closeable is not None:
                try:
                    closeable.close()
                except av.FFmpegError as exc:
                    log.debug("closing %s after a failure: %s", self._file.path, exc)
        self._file.discard()


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
