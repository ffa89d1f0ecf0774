"""Small typed records that flow between stages. Units live in the names."""

from __future__ import annotations

from dataclasses import dataclass, field

Seconds = float

TARGET_SAMPLE_RATE_HZ = 16_000


class Quarantine(Exception):
    """An input that cannot be used. `reason` is a short code stored in the quarantine table."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Segment:
    """One alignment interval of one tier, [start_s, end_s)."""

    tier: str
    idx: int
    label: str
    start_s: Seconds
    end_s: Seconds
    source: str


@dataclass
class Utterance:
    """Run-independent facts of one utterance, after decoding and resampling."""

    utterance_id: str
    corpus: str
    speaker: str | None
    split: str | None
    text: str | None
    n_samples: int
    source_sample_rate_hz: int
    sample_rate_hz: int = TARGET_SAMPLE_RATE_HZ
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def duration_s(self) -> Seconds:
        return self.n_samples / self.sample_rate_hz
