"""The archive's HTTP API: which topics are archived, and bounded extracts (CSV or Parquet) for analysts and
the console's export buttons. Scope ``archive:read``. Every extract is written to the audit trail (who, which
topic, which range; never the extract's content)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from services.archive.query import ExtractError, ExtractRequest, extract
from services.archive.settings import ArchiveSettings
from services.archive.store import ArchiveStore
from shared.auth import ApiError, Principal, record_audit, require_scope

router = APIRouter(prefix="/v1/archive", tags=["archive"])
SCOPE = "archive:read"
#: extracts run in threads (DuckDB); more at once would only queue for the CPU
_EXTRACTS = asyncio.Semaphore(2)
MEDIA = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def _store(request: Request) -> ArchiveStore:
    """The archive's store (set by the app's lifespan)."""
    return request.app.state.archive_store


def _settings(request: Request) -> ArchiveSettings:
    return request.app.state.ctx.settings


@router.get("/topics", summary="Archived topics and the dates they hold")
async def topics(request: Request, principal: Principal = Depends(require_scope(SCOPE))) -> dict:
    store = _store(request)

    def listing():
        out = []
        for topic in store.topics():
            dates = store.dates(topic)
            out.append(
                {
                    "topic": topic,
                    "first_date": dates[0].isoformat() if dates else None,
                    "last_date": dates[-1].isoformat() if dates else None,
                    "dates": len(dates),
                }
            )
        return out

    return {"topics": await asyncio.to_thread(listing)}


@router.get(
    "/extract",
    summary="Archived events of one topic in a time range, as CSV or Parquet",
    responses={200: {"content": {MEDIA["csv"]: {}, MEDIA["parquet"]: {}}}},
)
async def extract_events(
    request: Request,
    topic: str = Query(..., description="e.g. ioc.meter.readings", max_length=120),
    start: datetime = Query(
        ..., alias="from", description="event time from (inclusive), RFC 3339 with offset"
    ),
    end: datetime = Query(..., alias="to", description="event time to (exclusive)"),
    area: str | None = Query(
        None, max_length=32, pattern=r"^[A-Za-z0-9._\-]+$", description="district/commune"
    ),
    entity: str | None = Query(None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"),
    format: str = Query("csv", pattern="^(csv|parquet)$"),
    principal: Principal = Depends(require_scope(SCOPE)),
) -> Response:
    settings = _settings(request)
    req = ExtractRequest(topic, start, end, area, entity, format)
    async with _EXTRACTS:
        try:
            body, rows = await asyncio.to_thread(
                extract,
                _store(request),
                req,
                max_rows=settings.extract_max_rows,
                max_days=settings.extract_max_days,
            )
        except ExtractError as exc:
            raise ApiError(
                exc.status, "invalid_extract", str(exc), [{"field": exc.field, "message": str(exc)}]
            ) from None
    await record_audit(
        request.app.state.ctx.pool,
        principal=principal.id,
        service="archive",
        action="archive.extracted",
        target=topic,
        detail={
            "from": start.isoformat(),
            "to": end.isoformat(),
            "area": area,
            "entity": entity,
            "rows": rows,
        },
    )
    name = f"{topic}_{start:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}.{format}"
    return Response(
        body,
        media_type=MEDIA[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"', "X-Row-Count": str(rows)},
    )
