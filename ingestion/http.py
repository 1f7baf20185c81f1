"""HTTP source: ``POST /v1/events`` takes a JSON batch and answers with one result per event.

Starlette on uvicorn. An answer means what it says: an event is ``acknowledged`` only once Kafka
acknowledged it (acks=all; the handler waits for the batch's delivery reports, up to ``ack_timeout``).
200: every event acknowledged; 207: some rejected (contract), the rest acknowledged; 503: some valid
events not acknowledged (broker down, timeout), each named with why; resend those with the same
event_id. Nothing is published for a bad request: 400 when the body is not a JSON batch, 413 when it
or the batch is too large, 408 when the body does not arrive within ``body_timeout`` (a slow client
cannot hold a worker forever). Publishing waits for the rate limiter in a worker thread, so a
slowed-down producer applies back-pressure to clients instead of buffering without bound.
"""

import asyncio
import json

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingestion.service import ACK_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS, IngestionService

MAX_BODY_BYTES = 1_048_576
MAX_EVENTS = 5_000


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, max_body_bytes: int) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise _BodyTooLarge
    return body


def create_app(
    service: IngestionService,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_events: int = MAX_EVENTS,
    ack_timeout: float = ACK_TIMEOUT_SECONDS,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
):
    async def ingest(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return _error(413, f"body is {declared} bytes; the limit is {max_body_bytes}")
        try:
            body = await asyncio.wait_for(_read_body(request, max_body_bytes), body_timeout)
        except _BodyTooLarge:
            return _error(413, f"body exceeds the limit of {max_body_bytes} bytes")
        except TimeoutError:
            return _error(408, f"the body did not arrive within {body_timeout:g}s")
        try:
            payload = json.loads(body)
        except ValueError as err:
            return _error(400, f"body is not valid JSON: {err}")
        events = payload.get("events") if isinstance(payload, dict) else payload
        if not isinstance(events, list):
            return _error(400, 'expected a JSON array of events or {"events": [...]}')
        if len(events) > max_events:
            return _error(413, f"{len(events)} events in one batch; the limit is {max_events}")
        outcomes = await run_in_threadpool(service.submit_batch, events, "http", ack_timeout)
        counts = {s: sum(o.status == s for o in outcomes) for s in ("acknowledged", "rejected", "not_acknowledged")}
        status = 503 if counts["not_acknowledged"] else 207 if counts["rejected"] else 200
        body = {**counts, "results": [o.model_dump(exclude_none=True) for o in outcomes]}
        return JSONResponse(body, status_code=status)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "in_doubt": service.publisher.in_doubt})

    return Starlette(
        routes=[
            Route("/v1/events", ingest, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
