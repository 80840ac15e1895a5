"""The figures of one benchmarks.limits run, as a table for people and a JSON line for tools."""

from __future__ import annotations

from dataclasses import dataclass, field

SIZE_LABELS = {"512": "512x512", "1080": "1920x1080"}


@dataclass
class Figures:
    """Numbers (every one positive in a good run) and a few words saying what was measured."""

    numbers: dict[str, float] = field(default_factory=dict)
    words: dict[str, str] = field(default_factory=dict)

    def add(self, **numbers: float) -> None:
        self.numbers.update({name: float(value) for name, value in numbers.items()})

    def best(self, **numbers: float) -> None:
        """Keeps the highest value seen for each name (the best of several rounds)."""
        for name, value in numbers.items():
            self.best_with(name, value, {})

    def best_with(self, name: str, value: float, companions: dict[str, float]) -> None:
        """Keeps `value` if it is the best for `name` so far, with figures measured in the
        same run (Triton's batch during that job)."""
        if value > self.numbers.get(name, float("-inf")):
            self.add(**{name: value}, **companions)

    def describe(self, **words: str) -> None:
        self.words.update(words)

    def __getitem__(self, name: str) -> float:
        return self.numbers[name]

    def as_json(self) -> dict[str, float | str]:
        rounded: dict[str, float | str] = {k: round(v, 4) for k, v in self.numbers.items()}
        return {**rounded, **self.words}


def render_table(f: Figures) -> str:
    n, w = f.numbers, f.words
    sizes = [label for label in SIZE_LABELS if f"e2e_fps_{label}" in n]
    rows: list[tuple[str, ...]] = [("", *(SIZE_LABELS[s] for s in sizes))]

    def row(title: str, key: str, unit: str = "fps") -> None:
        cells = []
        for s in sizes:
            value = n.get(f"{key}_{s}")
            cells.append("" if value is None else _cell(value, unit))
        rows.append((title, *cells))

    row("codec only (frame store + composite + encode)", "codec_fps")
    row("limit", "limit_fps")
    row("e2e: one job through Engine", "e2e_fps")
    row("  Triton's average executed batch", "e2e_triton_batch", "frames")
    row("  e2e / limit (target >= 0.85)", "ratio_limit", "x")
    row("naive: decode, onnxruntime batch 1, composite, encode", "naive_fps")
    row("  e2e / naive (target >= 1.0 at 1080p)", "ratio_naive", "x")
    row("avatar preparation, new avatar", "avatar_prep_fps")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        f"lip-sync model: {w['lipsync_model']} ({w['lipsync_architecture']}), "
        f"instances {w['instance_kinds']}; encoder {w['encoder']}",
        f"{n['frames']:.0f} frames per job; limit assumes {w['limit_assumes']}",
        f"model only, Triton at saturation (batches of {n['lipsync_batch_size']:.0f}, "
        f"{n['model_in_flight']:.0f} in flight): {n['model_triton_fps']:.1f} fps",
        f"model only, onnxruntime in this process, batch 1: {n['model_ort_batch1_fps']:.1f} fps",
        "",
    ]
    for r in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)))
    lines.append("")
    jobs = sorted(int(k.split("_")[1]) for k in n if k.startswith("concurrency_") and "fps" in k)
    for count in jobs:
        ratio = n.get(f"ratio_concurrency_{count}")
        lines.append(
            f"concurrency: {count} job(s) at 512x512: {n[f'concurrency_{count}_fps']:.1f} fps "
            f"in aggregate, Triton batch {n[f'concurrency_{count}_batch']:.1f}"
            + ("" if ratio is None else f", {ratio:.2f}x one job (target >= 1.0)")
        )
    lines.append(
        f"avatar preparation at 512x512: {n['avatar_prep_fps']:.1f} fps new, "
        f"{n['avatar_reused_fps']:.0f} fps reused; first encoded frame of a job with a new "
        f"avatar {n['first_frame_s']:.2f} s after submission"
    )
    return "\n".join(lines)


def _cell(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.1f} {unit}"
