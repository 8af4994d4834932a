"""The studio's caps and its error type: every refusal is one readable line with an HTTP status."""

from __future__ import annotations

MAX_N = 16                  # images per job
MAX_STEPS = 500             # sampling steps per job
MAX_QUEUED = 16             # jobs waiting (the running one not counted); more are refused with 429
MAX_PROMPT = 500            # characters of a prompt
MAX_UPLOAD_BYTES = 12 << 20  # an uploaded image or mask, decoded
MAX_UPLOAD_SIDE = 4096       # pixels on either side of an upload
MAX_UPLOAD_PIXELS = 16_000_000
MAX_BODY_BYTES = 40 << 20    # a whole request body (two uploads as base64, and the rest)
MAX_EVENT_CLIENTS = 32       # open /api/events streams
MAX_SEED = 2**63 - 1
KEEP_FINISHED = 100          # finished jobs kept in the queue view (the history keeps every result)
MAX_LOG_POINTS = 1000        # points per training curve sent to the dashboard
LOADED_MODELS = 2            # models kept in memory at once


class ApiError(Exception):
    """A request the studio refuses: ``status`` and a message for the page."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def as_dict() -> dict[str, int]:
    """The caps a client should know, for /api/info."""
    return {"max_n": MAX_N, "max_steps": MAX_STEPS, "max_queued": MAX_QUEUED, "max_prompt": MAX_PROMPT,
            "max_upload_bytes": MAX_UPLOAD_BYTES, "max_upload_side": MAX_UPLOAD_SIDE}
