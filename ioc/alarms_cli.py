"""``ioc alarms stats``: the alarm rates of the running center (from the city service's API)."""

from __future__ import annotations

import json
import os

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Alarm management figures of the running center.", no_args_is_help=True)


@app.command("stats")
def stats(
    minutes: int = typer.Option(60, help="the period measured, ending now"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    url: str = typer.Option("", help="city service URL (default: the running center's)"),
    key: str = typer.Option("", envvar="IOC_API_KEY", help="API key (default: the dev admin key)"),
) -> None:
    """Alarms annunciated per 10 minutes (budget: EEMUA 191's one), suppressed repeats, top raisers."""
    from ioc import center_state
    from ioc.cli import DEV_KEY_FILE, STATE_DIR

    base = url or center_state.service_url(
        STATE_DIR, "city", f"http://127.0.0.1:{os.environ.get('IOC_CITY_PORT', '8100')}"
    )
    api_key = key or (DEV_KEY_FILE.read_text().strip() if DEV_KEY_FILE.exists() else "")
    r = httpx.get(
        f"{base}/v1/alarms/stats",
        params={"minutes": minutes},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    if r.status_code != 200:
        Console(stderr=True).print(f"[red]the city service answered {r.status_code}: {r.text[:300]}[/red]")
        raise typer.Exit(1)
    body = r.json()
    if as_json:
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    out = Console()
    over = body["per_10_minutes"] > body["budget_per_10_minutes"]
    out.print(
        f"last {minutes} min: {body['annunciated']} alarms annunciated, "
        f"[{'red' if over else 'green'}]{body['per_10_minutes']} per 10 min[/] "
        f"(budget {body['budget_per_10_minutes']}); {body['suppressed']} repeats suppressed; "
        f"open {body['open']}, shelved {body['shelved']}, chattering {body['chattering']}"
    )
    table = Table(title="most frequent alarms")
    for col in ("alarm", "district", "raises", "chattering"):
        table.add_column(col)
    for t in body["top"]:
        table.add_row(t["alarm_id"], t["district"] or "", str(t["raises"]), "yes" if t["chattering"] else "")
    out.print(table)
