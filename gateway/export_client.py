"""``tunegate export``: create an export through the HTTP API, follow its progress, download its files."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from finetune.export.bundle import ollama_name

POLL_S = 1.0


def run_export(
    base_url: str,
    api_key: str,
    *,
    model: str,
    fmt: str,
    quant: str | None,
    system: str | None,
    output: str | None,
    timeout_s: float = 24 * 3600,
) -> int:
    try:
        return _run(
            base_url, api_key, model=model, fmt=fmt, quant=quant, system=system, output=output, timeout_s=timeout_s
        )
    except httpx.HTTPError as exc:
        print(f"error: {base_url}: {type(exc).__name__}: {exc} (is `tunegate serve` running there?)", file=sys.stderr)
        return 1


def _run(
    base_url: str,
    api_key: str,
    *,
    model: str,
    fmt: str,
    quant: str | None,
    system: str | None,
    output: str | None,
    timeout_s: float,
) -> int:
    body = {
        "model": model,
        "format": fmt,
        **({"quant": quant} if quant else {}),
        **({"system": system} if system else {}),
    }
    with httpx.Client(
        base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=httpx.Timeout(60.0)
    ) as client:
        created = client.post("/exports", json=body)
        if created.status_code != 200:
            return _fail(created)
        export = created.json()
        print(
            f"{export['id']}: exporting {model} as {fmt}{' ' + export['quant'] if export.get('quant') else ''}",
            file=sys.stderr,
        )
        deadline, last = time.monotonic() + timeout_s, None
        while export["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                print(f"error: {export['id']} did not finish in time", file=sys.stderr)
                return 1
            time.sleep(POLL_S)
            polled = client.get(f"/exports/{export['id']}")
            if polled.status_code != 200:
                return _fail(polled)
            export = polled.json()
            line = f"  {export['progress'] * 100:5.1f}%  {export['stage']}"
            if line != last:
                print(line, file=sys.stderr)
                last = line
        if export["status"] != "succeeded":
            error = export.get("error") or {}
            print(f"error: export {export['status']}: {error.get('message', '')}", file=sys.stderr)
            return 1
        folder = Path(output or f"{ollama_name(model)}-{export.get('quant') or fmt}")
        folder.mkdir(parents=True, exist_ok=True)
        for item in export["output_files"]:
            target = folder / Path(item["filename"]).name
            with client.stream("GET", f"/files/{item['id']}/content") as response:
                if response.status_code != 200:
                    response.read()
                    return _fail(response)
                with open(target, "wb") as fh:
                    for chunk in response.iter_bytes(1 << 20):
                        fh.write(chunk)
            print(target)
        for warning in export.get("warnings") or []:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def _fail(response: httpx.Response) -> int:
    try:
        message = response.json()["error"]["message"]
    except Exception:
        message = response.text[:500]
    print(f"error: {response.status_code}: {message}", file=sys.stderr)
    return 1
