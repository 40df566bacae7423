"""The events of the outbox (docs/events.md, "Live events"): a server-sent-events stream with
``Accept: text/event-stream``, resumable with ``Last-Event-ID``; a page of past events as JSON otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from gateway.api.deps import AnyCaller
from gateway.api.fields import INT63
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.problems import AUTHENTICATED, responses
from gateway.service.event_stream import EventStream, Gap, Heartbeat, Subscription
from gateway.service.ports import OutboxEvent

router = APIRouter(prefix="/v1/events", tags=["events"], route_class=StrictJsonRoute)

EventId = Annotated[int, Field(ge=0, le=INT63)]
# a header has no null: the document says a string of digits, exactly what is accepted
_DIGITS = "^[0-9]{1,18}$"
LastEventId = Annotated[str | None, Field(pattern=_DIGITS), WithJsonSchema(
    {"type": "string", "pattern": _DIGITS, "examples": ["4711"],
     "description": "the stream's resume point: the last id received (wins over `after`)"})]
TOPIC = r"^[^\x00-\x1f\x7f]{1,200}$"


_EVENT = {"id": 4711, "topic": "accounts/A-1/balance", "type": "PaymentReceived", "at": "2026-12-03T08:00:01Z",
          "payload": {"type": "PaymentReceived", "account_id": "A-1", "source": "billing", "payment_id": "P-1001",
                      "amount_fen": 5000, "balance_fen": 6000, "at": "2026-12-03T08:00:01Z"}}


class EventPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EVENT]})

    id: int = Field(description="the outbox id: increasing in commit order")
    topic: str = Field(description="the MQTT topic, without the prefix")
    type: str
    at: dt.datetime = Field(description="the time of the change")
    payload: dict[str, Any]


class GapPublic(BaseModel):
    after: int = Field(description="the resume point asked for")
    oldest: int = Field(description="the oldest event kept (0: none)")
    newest: int = Field(description="the newest event (0: none)")


class EventList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [_EVENT], "gap": None, "next_after": 4711}]})

    data: list[EventPublic]
    gap: GapPublic | None = Field(description="set when events after `after` are no longer kept: the page starts "
                                              "at the oldest kept event")
    next_after: int = Field(description="pass as `after` for the next page (or as `Last-Event-ID` to a stream)")


_STREAM = {"text/event-stream": {"schema": {"type": "string"}, "example":
                                 'id: 4711\nevent: PaymentReceived\ndata: {"topic":"accounts/A-1/balance",'
                                 '"at":"2026-12-03T08:00:01Z","payload":{...}}\n\n'}}


@router.get("", response_model=EventList,
            responses={200: {"description": "a page of past events (JSON), or the live stream with "
                                            "`Accept: text/event-stream`", "content": _STREAM},
                       **responses(*AUTHENTICATED)})
async def list_events(request: Request, caller: AnyCaller,
                      after: Annotated[EventId | None, Query(description="events after this id; a stream "
                                                                         "without it starts now")] = None,
                      topic: Annotated[str | None, Query(pattern=TOPIC, examples=["accounts/A-1/"],
                                                         description="only topics starting so")] = None,
                      limit: Annotated[int, Query(ge=1, le=1000, description="JSON: events per page")] = 100,
                      last_event_id: Annotated[LastEventId, Header(alias="Last-Event-ID")] = None,
                      ) -> Any:
    """The outbox's events: a page as JSON, or a server-sent-events stream (`Accept: text/event-stream`)."""
    events: EventStream = request.app.state.events
    resume = int(last_event_id) if last_event_id is not None else after
    if "text/event-stream" in request.headers.get("accept", ""):
        return SseResponse(await events.subscribe(after=resume, topic=topic), heartbeat_s=events.heartbeat_s)
    page = await events.page(after=resume, topic=topic, limit=limit)
    return EventList(data=[_public(e) for e in page.events], next_after=page.next_after,
                     gap=None if page.gap is None else GapPublic(after=page.gap.after, oldest=page.gap.oldest,
                                                                 newest=page.gap.newest))


def _public(event: OutboxEvent) -> EventPublic:
    return EventPublic(id=event.id, topic=event.topic, type=str(event.payload.get("type", "message")),
                       at=event.created_at, payload=event.payload)


def sse(item: OutboxEvent | Gap | Heartbeat) -> bytes:
    """One item as server-sent-events lines."""
    if isinstance(item, Heartbeat):
        return b": heartbeat\n\n"
    if isinstance(item, Gap):
        data = orjson.dumps({"after": item.after, "oldest": item.oldest, "newest": item.newest})
        return b"event: gap\ndata: " + data + b"\n\n"
    kind = str(item.payload.get("type", "message")).replace("\n", " ").replace("\r", " ")
    data = orjson.dumps({"topic": item.topic, "at": item.created_at, "payload": item.payload},
                        option=orjson.OPT_UTC_Z)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (item.id, kind.encode(), data)


class SseResponse(StreamingResponse):
    """The stream of one subscription until it ends (the client leaves, falls too far behind, or the server
    stops); a client that disconnects ends it at once, not at the next write."""

    def __init__(self, subscription: Subscription, *, heartbeat_s: float,
                 encode: Callable[[OutboxEvent | Gap | Heartbeat], bytes] = sse) -> None:
        super().__init__(iter(()), media_type="text/event-stream",
                         headers={"X-Accel-Buffering": "no"})  # (nginx: pass each event on at once)
        self.subscription, self.heartbeat_s, self.encode = subscription, heartbeat_s, encode

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        subscription = self.subscription

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            subscription.close()

        watcher = asyncio.create_task(watch(), name="gateway.events.client")
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
            async for item in subscription.items(heartbeat_s=self.heartbeat_s):
                await send({"type": "http.response.body", "body": self.encode(item), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client left while we wrote
            pass
        finally:
            subscription.close()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
