"""HTTP source: ``POST /v1/events`` takes a JSON batch and answers with one result per event.

Starlette on uvicorn. The body size is capped before parsing; the response is 200 when every event
was accepted, 207 (multi-status) when some were rejected, 400 when the body is not a JSON batch and
413 when it is too large. Publishing waits for the rate limiter in a worker thread, so a slowed-down
producer applies back-pressure to clients instead of buffering without bound.
"""

import json

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingestion.service import IngestionService

MAX_BODY_BYTES = 1_048_576
MAX_EVENTS = 5_000


def create_app(service: IngestionService, max_body_bytes: int = MAX_BODY_BYTES, max_events: int = MAX_EVENTS):
    async def ingest(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return _error(413, f"body is {declared} bytes; the limit is {max_body_bytes}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return _error(413, f"body exceeds the limit of {max_body_bytes} bytes")
        try:
            payload = json.loads(body)
        except ValueError as err:
            return _error(400, f"body is not valid JSON: {err}")
        events = payload.get("events") if isinstance(payload, dict) else payload
        if not isinstance(events, list):
            return _error(400, 'expected a JSON array of events or {"events": [...]}')
        if len(events) > max_events:
            return _error(413, f"{len(events)} events in one batch; the limit is {max_events}")
        outcomes = await run_in_threadpool(lambda: [service.submit(e, "http", i) for i, e in enumerate(events)])
        accepted = sum(o.status == "accepted" for o in outcomes)
        body = {
            "accepted": accepted,
            "rejected": len(outcomes) - accepted,
            "results": [o.model_dump(exclude_none=True) for o in outcomes],
        }
        return JSONResponse(body, status_code=200 if accepted == len(outcomes) else 207)

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
