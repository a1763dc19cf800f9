"""Dead letters: what is kept of a message that could not be performed, and how it is stored.

A record is JSON: where the message was, its envelope byte for byte, the error
and its traceback, how many attempts it got, and when it was dead-lettered. The
storage adds the rank its order had (``cycle.lua``), so that putting it back
restores its precedence even where the handler's class is not known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec


@dataclass(frozen=True)
class DeadLetterRecord:
    """A message that was not performed: its payload, the error and where it came from.

    Attributes:
        handler, thread, order: Where the message was.
        payload: The stored envelope, byte for byte.
        error_type, error, traceback: What went wrong (a `DecodeError` for a
            payload that could not be decoded).
        attempts: How many times it was performed (0 if it never decoded).
        failed_at: When it was dead-lettered (seconds since the epoch).
        rank: The rank of its order when it was dead-lettered (its precedence), as
            the storage recorded it; None for records written before it did.
    """

    handler: str
    thread: str
    order: str
    payload: bytes
    error_type: str
    error: str
    traceback: str
    attempts: int
    failed_at: float
    rank: float | None = None

    def encode(self) -> bytes:
        """The record as stored: JSON, the payload as text (or hex if not UTF-8)."""
        data: dict[str, Any] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name != "payload" and not (name == "rank" and self.rank is None)
        }
        try:
            data["payload"] = self.payload.decode()
        except UnicodeDecodeError:
            data["payload_hex"] = self.payload.hex()
        return msgspec.json.encode(data)

    @classmethod
    def decode(cls, raw: bytes) -> DeadLetterRecord:
        """A record from its stored JSON."""
        data = msgspec.json.decode(raw)
        payload = data["payload"].encode() if "payload" in data else bytes.fromhex(data["payload_hex"])
        return cls(
            handler=data["handler"],
            thread=data["thread"],
            order=data["order"],
            payload=payload,
            error_type=data["error_type"],
            error=data["error"],
            traceback=data["traceback"],
            attempts=data["attempts"],
            failed_at=data["failed_at"],
            rank=data.get("rank"),
        )
