"""JSON envelopes for requests, typed by the handler's ``perform`` annotation.

An envelope is the compact JSON array ``[enqueued_at, request]``; `Codec.encode`
returns a batch of them joined by newlines, the form ``push.lua`` splits. With telemetry on
(`sharded_queue.telemetry`), the register span's W3C traceparent follows as a third element,
``[enqueued_at, request, "00-<trace id>-<span id>-<flags>"]``: a string of fixed length, which
the scripts cut off where they take the request's bytes (``request_of`` in ``lib.lua``), so that
``if_not_exists`` marks and schedules are the same with tracing on or off. Both shapes decode
(a rolling upgrade mixes them; a version before this one reads only the first). Requests are encoded
and decoded with msgspec: dataclasses, ``NamedTuple``, msgspec ``Struct`` and
plain JSON values natively, pydantic models through ``model_dump`` /
``model_validate``. No pickle: a payload can only ever become the handler's
declared type, never an arbitrary object.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from .core import Envelopes, Message
from .errors import DecodeError, SerializationError

TRACEPARENT_LENGTH = 55
"""Length of a W3C traceparent of version 00: ``00-`` 32 hex ``-`` 16 hex ``-`` 2 hex."""
_TRACED = re.compile(rb',"([0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})"\] ?\Z')
_TAIL = TRACEPARENT_LENGTH + 6  # ',"' traceparent '"]', an owner's space, and one byte before
_HEAD = msgspec.json.Decoder(tuple[float, msgspec.Raw])
_TRACED_HEAD = msgspec.json.Decoder(tuple[float, msgspec.Raw, str])


def _is_pydantic(kind: Any) -> bool:
    return isinstance(kind, type) and hasattr(kind, "model_validate") and hasattr(kind, "model_dump")


def _encode_hook(value: Any) -> Any:
    if _is_pydantic(type(value)):
        return value.model_dump(mode="json")
    raise TypeError(f"objects of type {type(value).__name__} cannot be serialized")


def _non_finite(value: Any) -> bool:
    """True when ``value`` (plain builtins) holds a NaN or an infinite float anywhere."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(item) for item in value)
    return False


def _struct_mirror(kind: Any) -> Any:
    """A msgspec ``Struct`` with a dataclass's fields and their annotations, or None (not a
    dataclass, or annotations that do not resolve). Decoding into it checks every field as
    decoding into the dataclass does, at half the cost: `Codec.encode`'s check of a batch."""
    if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
        return None
    try:
        hints = typing.get_type_hints(kind)
        fields = [(field.name, hints[field.name]) for field in dataclasses.fields(kind)]
        mirror = msgspec.defstruct(f"{kind.__name__}Check", fields)
        msgspec.json.Decoder(mirror)  # an annotation msgspec cannot decode: no mirror
    except (NameError, KeyError, TypeError, ValueError):  # the dataclass itself checks, more slowly
        return None
    return mirror


class Codec:
    """Encodes requests of one type into envelopes and back.

    Args:
        request_type: The type annotated on ``perform``'s ``*requests``;
            `typing.Any` accepts any JSON value.
    """

    def __init__(self, request_type: Any = Any) -> None:
        self.request_type = request_type
        self._pydantic = _is_pydantic(request_type)
        self._encoder = msgspec.json.Encoder(enc_hook=_encode_hook)
        inner = Any if self._pydantic else request_type
        try:
            self._decoder = msgspec.json.Decoder(tuple[float, inner])  # type: ignore[valid-type]
            self._traced = msgspec.json.Decoder(tuple[float, inner, str])  # type: ignore[valid-type]
        except TypeError as exc:
            raise SerializationError(f"request type {request_type!r} is not supported: {exc}") from exc
        user_class = (
            isinstance(request_type, type)
            and request_type is not Any
            and typing.get_origin(request_type) is None
            and request_type.__module__ != "builtins"
        )
        # user classes are checked with isinstance, then (but pydantic models, which validate
        # when they are made) by decoding the batch back, since a dataclass or a Struct takes any
        # value for a field; other annotations (int, list[int], ...) by the decode alone
        self._instance_of = request_type if user_class else None
        self._validate = request_type is not Any and not self._pydantic
        mirror = _struct_mirror(request_type)
        self._checks = (
            (msgspec.json.Decoder(tuple[float, mirror]), msgspec.json.Decoder(tuple[float, mirror, str]))  # type: ignore[valid-type]
            if mirror is not None
            else (self._decoder, self._traced)
        )

    def encode(self, requests: Sequence[Any], enqueued_at: float, traceparent: str | None = None) -> bytes:
        """Envelopes for ``requests``, joined by newlines (compact JSON has none), all or nothing;
        each carries ``traceparent`` (a W3C traceparent) when one is given.

        Raises:
            SerializationError: a request is not of the handler's type or not encodable.
        """
        kind = self._instance_of
        if kind is not None and not all(isinstance(request, kind) for request in requests):
            wrong = next(request for request in requests if not isinstance(request, kind))
            raise SerializationError(f"request {wrong!r} is a {type(wrong).__name__}, expected {kind.__name__}")
        if traceparent is None:
            items: list[tuple[Any, ...]] = [(enqueued_at, request) for request in requests]
        else:
            items = [(enqueued_at, request, traceparent) for request in requests]
        try:
            lines = self._encoder.encode_lines(items)
        except (TypeError, ValueError, OverflowError):
            for request in requests:  # find the culprit for a clear message
                try:
                    self._encoder.encode(request)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise SerializationError(f"request {request!r} cannot be serialized: {exc}") from exc
            raise
        envelopes = lines[:-1]
        if b"null" in envelopes:  # JSON has no NaN or infinity: msgspec writes them as null
            self._refuse_non_finite(requests)
        if self._validate:
            self._check_decodes(requests, envelopes, self._checks[traceparent is not None])
        return envelopes

    def _check_decodes(self, requests: Sequence[Any], envelopes: bytes, decoder: msgspec.json.Decoder[Any]) -> None:
        """Refuse requests a worker could not decode (``D(x="s")`` for ``x: int``): one decode of
        the whole batch, then one at a time to name the culprit."""
        try:
            decoder.decode_lines(envelopes)
            return
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        for request, payload in zip(requests, envelopes.split(b"\n"), strict=True):
            try:
                decoder.decode(payload)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise SerializationError(
                    f"request {request!r} is not a valid {request_type_name(self)}: {exc}; a worker could not "
                    "decode it, so it is not stored"
                ) from exc

    def _refuse_non_finite(self, requests: Sequence[Any]) -> None:
        for request in requests:
            if _non_finite(msgspec.to_builtins(request, enc_hook=_encode_hook)):
                raise SerializationError(
                    f"request {request!r} holds NaN or infinity, which JSON cannot carry (it would arrive as null)"
                )

    def decode_batch(self, payloads: Sequence[bytes]) -> tuple[Sequence[Message], list[tuple[int, BaseException]]]:
        """Decode a fetched batch: its messages, and the positions and errors of bad payloads."""
        if not self._pydantic:
            decode_one = self._decoder.decode
            try:  # the common case, in one pass and without a Message per request
                return Envelopes([decode_one(payload) for payload in payloads]), []
            except Exception:
                pass
            try:  # a batch registered with telemetry on: the traceparents stay in the payloads
                return Envelopes([(at, request) for at, request, _ in map(self._traced.decode, payloads)]), []
            except Exception:
                pass  # some payload is bad, or the shapes are mixed: the loop below decodes one at a time
        decode = self.decode if self._pydantic else self._decode_envelope
        messages: list[Message] = []
        bad: list[tuple[int, BaseException]] = []
        for position, payload in enumerate(payloads):
            try:
                enqueued_at, request = decode(payload)
            except Exception as exc:  # msgspec, pydantic and JSON errors alike
                error = exc if isinstance(exc, DecodeError) else DecodeError(f"cannot decode {payload[:200]!r}: {exc}")
                bad.append((position, error))
                continue
            messages.append(Message(position, request, enqueued_at))
        return messages, bad

    def decode(self, payload: bytes) -> tuple[float, Any]:
        """``(enqueued_at, request)`` from an envelope.

        Raises:
            DecodeError: the payload is not a valid envelope of this type.
        """
        try:
            enqueued_at, request = self._decode_envelope(payload)
            if self._pydantic:
                request = self.request_type.model_validate(request)
        except Exception as exc:  # msgspec, pydantic and JSON errors alike
            raise DecodeError(f"cannot decode payload {payload[:200]!r}: {exc}") from exc
        return enqueued_at, request

    def _decode_envelope(self, payload: bytes) -> tuple[float, Any]:
        """``(enqueued_at, request)`` of either shape of envelope; msgspec's error when neither."""
        try:
            return self._decoder.decode(payload)
        except msgspec.ValidationError:
            if traceparent_of(payload) is None:
                raise
        enqueued_at, request, _ = self._traced.decode(payload)
        return enqueued_at, request


def traceparent_of(envelope: bytes) -> str | None:
    """The W3C traceparent an envelope carries after its request, or None (as ``lib.lua``'s
    ``request_of`` tells them apart: a request is one JSON value, so the traceparent's comma
    is never the envelope's first)."""
    match = _TRACED.search(envelope, max(0, len(envelope) - TRACEPARENT_LENGTH - 5))
    if match is None or match.start() <= envelope.find(b","):
        return None
    return match.group(1).decode()


def traceparents(payloads: Sequence[bytes], messages: Sequence[Message]) -> set[str]:
    """The distinct traceparents of a batch's ``messages``, read from the fetched ``payloads``.

    Envelopes of one register call end alike: each is looked at by its last 61 bytes (a
    traceparent and what precedes it) when its first comma comes before them, else whole
    (prefixed with a newline, which no envelope holds), so a batch costs a set of short
    slices and a search per register call.
    """
    if isinstance(messages, Envelopes):  # a whole or sliced batch: positions are consecutive
        first = messages[0].position if messages else 0
        batch: Iterable[bytes] = payloads[first : first + len(messages)]
    else:
        batch = [payloads[message.position] for message in messages]
    keys = {p[-_TAIL:] if p.find(b",") < len(p) - _TAIL else b"\n" + p for p in batch}
    found = set()
    for key in keys:
        if key[:1] == b"\n":
            traceparent = traceparent_of(key[1:])
        else:
            match = _TRACED.search(key)  # the envelope's first comma is before the tail
            traceparent = None if match is None else match.group(1).decode()
        if traceparent is not None:
            found.add(traceparent)
    return found


def enqueued_at_of(envelope: bytes) -> float | None:
    """An envelope's ``enqueued_at`` (either shape), without decoding its request; None when it does not parse."""
    try:
        return float(_HEAD.decode(envelope)[0])
    except msgspec.DecodeError:
        pass
    try:
        return float(_TRACED_HEAD.decode(envelope)[0])
    except msgspec.DecodeError:
        return None


def request_type_name(codec: Codec) -> str:
    """A readable name of a codec's request type."""
    kind = codec.request_type
    return kind.__name__ if isinstance(kind, type) and typing.get_origin(kind) is None else repr(kind)
