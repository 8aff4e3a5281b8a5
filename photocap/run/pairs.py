"""RAW+JPEG pairs: the RAW of a pair takes its JPEG's caption, one model call per shot.

A camera set to RAW+JPEG writes ``IMG_0001.CR2`` and ``IMG_0001.JPG``: the same exposure, and
the JPEG is the camera's own rendering of it. The RAW (its :attr:`PhotoFile.lead
<photocap.library.PhotoFile>` is the JPEG) is decoded (its hashes and facts go into its row)
but not captioned: it waits, out of the batch, for its JPEG's caption and is written with it;
if the JPEG gets none (it failed), the RAW goes to the model after all. A JPEG not in this run
lends the caption its row holds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from photocap.index import PhotoIndex
from photocap.run.plan import Job, Ready, captioned_by, paired_job, row_record
from photocap.writers import KEEP_VECTOR, CaptionRecord


class RawJpegPairs:
    """The pairs of one run, and the RAWs waiting for their JPEG's caption."""

    def __init__(self, index: PhotoIndex, model_id: str, leads: set[Path]) -> None:
        self.index = index
        self.model_id = model_id
        self.paired = leads  # leads (JPEGs) whose RAW is decoded in this run too
        self.parked: dict[Path, Ready] = {}  # lead -> its decoded RAW, waiting for the caption
        self.lead_captions: dict[Path, CaptionRecord | None] = {}  # lead done, RAW not seen yet
        self.released: list[Ready] = []  # RAWs whose lead got no caption: the model's after all

    def waits(self, raw: Ready) -> bool:
        """The RAW of a pair whose JPEG is still on its way in this run: parked until
        :meth:`resolve` gives the JPEG's caption."""
        lead = raw.photo.lead
        if lead is None or lead not in self.paired or lead in self.lead_captions:
            return False
        self.parked[lead] = raw
        return True

    def job_for(self, raw: Ready) -> Job | None:
        """The writes of a pair's RAW with its JPEG's caption, from this run or from the
        index; None: not a pair's RAW, or its JPEG has no caption (the model captions it)."""
        lead = raw.photo.lead
        if lead is None:
            return None
        if lead in self.paired:
            record = self.lead_captions.pop(lead)
        else:  # not in this run: captioned by an earlier one, or not at all
            row = self.index.get(lead)
            record = row_record(lead, row) if captioned_by(row, self.model_id) else None
        return None if record is None else self._paired(raw, lead, record)

    def resolve(self, lead: Path, record: CaptionRecord | None) -> list[Job]:
        """``lead`` (a photo of this run) has ``record`` as its caption, or none: the jobs of
        its RAW if that is waiting (without a caption it goes to the model instead), or the
        caption kept for the RAW still to come."""
        if lead not in self.paired:
            return []
        raw = self.parked.pop(lead, None)
        if raw is None:
            self.lead_captions[lead] = record
        elif record is None:
            self.released.append(raw)
        else:
            return [self._paired(raw, lead, record)]
        return []

    def _paired(self, raw: Ready, lead: Path, record: CaptionRecord) -> Job:
        """The RAW's writes with its JPEG's caption, and its JPEG's vector: the one just made,
        else the one the JPEG's row holds (a caption carried or read from the index)."""
        if record.vector is None or record.vector == KEEP_VECTOR:
            record = replace(record, vector=self.index.get_vector(lead))
        return paired_job(raw.photo, record)

    def take_released(self) -> list[Ready]:
        """The RAWs whose JPEG got no caption, for the model's next batch."""
        released, self.released = self.released, []
        return released
