"""Throughput and tail latency of the read path: `GET /v1/rates/live` and `POST /v1/remit/quote`
on one `currencyex serve` process (PostgreSQL and Redis on loopback, rate limits off), beside a
bare Starlette endpoint that answers the same shape of JSON on the same server stack (uvicorn,
httptools, uvloop), measured by wrk in one run.

Loopback only, bounded (wrk runs `--seconds` per endpoint), stops by itself and removes what it
made (a database, a data folder, both servers). Needs `wrk` (Debian: apt-get install wrk).

    .venv/bin/python bench/rates.py [--connections 64] [--seconds 10] [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from exchange import (
    CUSTOMER_PASSWORD,
    Server,
    database,
    fail,
    free_port,
    login,
    run_loop,
    server_env,
)

# The targets of the issue: against the bare endpoint in the same run.
THROUGHPUT_AT_LEAST = 0.4
P99_AT_MOST = 3.0

BARE_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    LIVE = {live!r}
    QUOTE = {quote!r}

    async def live(request):
        return JSONResponse(LIVE)

    async def quote(request):
        await request.json()  # a quote's body is read, as ours reads it
        return JSONResponse(QUOTE, status_code=201)

    app = Starlette(routes=[Route("/live", live), Route("/quote", quote, methods=["POST"])])
    """
)


@dataclass(frozen=True)
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, *, connections: int, seconds: int, threads: int, script: Path | None) -> Result:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, flags=re.MULTILINE))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result(
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def wrk_script(folder: Path, name: str, *, method: str, body: str, headers: dict[str, str]) -> Path:
    """A wrk Lua script sending one request over and over."""
    lines = [f"wrk.method = {json.dumps(method)}", f"wrk.body = {json.dumps(body)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    path = folder / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


async def customer_token(base: str, run: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        email = f"rates-{run}@example.com"
        body = {"email": email, "password": CUSTOMER_PASSWORD, "full_name": "Rates Bench"}
        registered = await client.post("/v1/auth/register", json=body)
        if registered.status_code != 201:
            raise fail("register", registered)
        return await login(client, email, CUSTOMER_PASSWORD)


def start_bare(folder: Path, live: object, quote: object) -> tuple[subprocess.Popen[bytes], str]:
    """The bare app: `live` for GET /live, `quote` for a POST of JSON to /quote."""
    (folder / "bare_app.py").write_text(BARE_APP.format(live=live, quote=quote))
    port = free_port()
    # The same server stack as `currencyex serve`: uvicorn on httptools and uvloop.
    server = ["--http", "httptools", "--loop", "uvloop", "--no-access-log"]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), *server],
        cwd=folder,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/live", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the bare endpoint did not start")


def median(results: list[Result]) -> Result:
    """Each figure's median over the rounds (the middle one, or the mean of the two middle)."""

    def middle(values: list[float]) -> float:
        return statistics.median(values)

    return Result(
        requests_per_second=middle([r.requests_per_second for r in results]),
        p50_ms=middle([r.p50_ms for r in results]),
        p99_ms=middle([r.p99_ms for r in results]),
        non_2xx=sum(r.non_2xx for r in results),
        errors=sum(r.errors for r in results),
    )


def report(name: str, ours: Result, bare: Result) -> bool:
    throughput = ours.requests_per_second / bare.requests_per_second
    tail = ours.p99_ms / bare.p99_ms
    met = throughput >= THROUGHPUT_AT_LEAST and tail <= P99_AT_MOST and not ours.non_2xx
    for label, result in ((name, ours), ("  bare Starlette", bare)):
        print(
            f"{label:28} {result.requests_per_second:9.1f} req/s  p50 {result.p50_ms:7.2f} ms"
            f"  p99 {result.p99_ms:7.2f} ms  non-2xx {result.non_2xx}"
            f"  socket errors {result.errors}"
        )
    print(
        f"  ratio: throughput {throughput:.2f} (target >= {THROUGHPUT_AT_LEAST}), "
        f"p99 {tail:.2f} x (target <= {P99_AT_MOST}): {'met' if met else 'NOT met'}"
    )
    return met


def bench(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("bench/rates.py needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    run = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="cx-rates-") as tmp, database(f"cx_rates_{run}") as db:
        folder = Path(tmp)
        env = server_env(db, folder / "var")
        env["CURRENCYEX_LOG_LEVEL"] = args.log_level
        server = Server(env, folder, workers=1)
        bare: subprocess.Popen[bytes] | None = None
        try:
            server.start()
            base = server.bases[0]
            token = run_loop(customer_token(base, run))
            auth = {"Authorization": f"Bearer {token}"}
            live = httpx.get(f"{base}/v1/rates/live?base=USD", headers=auth, timeout=10)
            if live.status_code != 200:
                raise fail("rates/live", live)
            quote_body = json.dumps(
                {"source_currency": "USD", "target_currency": "EUR", "source_amount": "100.00"}
            )
            json_headers = {**auth, "Content-Type": "application/json"}
            quote = httpx.post(f"{base}/v1/remit/quote", content=quote_body, headers=json_headers)
            if quote.status_code != 201:
                raise fail("remit/quote", quote)
            bare, bare_base = start_bare(folder, live.json(), quote.json())
            get_live = wrk_script(folder, "live", method="GET", body="", headers=auth)
            post_quote = wrk_script(
                folder, "quote", method="POST", body=quote_body, headers=json_headers
            )
            measure = functools.partial(
                wrk, connections=args.connections, seconds=args.seconds, threads=args.threads
            )
            print(
                f"wrk: {args.connections} keep-alive connections, {args.seconds} s each, "
                f"{args.threads} thread(s), medians of {args.rounds} alternating rounds; "
                f"one serve process, log level {args.log_level}; {os.cpu_count()} CPUs"
            )
            ok = True
            for name, path, script in (
                ("GET /v1/rates/live?base=USD", "/v1/rates/live?base=USD", get_live),
                ("POST /v1/remit/quote", "/v1/remit/quote", post_quote),
            ):
                bare_path = "/live" if script is get_live else "/quote"
                # Ours and the bare endpoint take turns, and each figure is the median of its
                # rounds: a shared machine's slow spell then falls on both sides alike.
                ours, theirs = [], []
                for _ in range(args.rounds):
                    ours.append(measure(base + path, script=script))
                    theirs.append(measure(bare_base + bare_path, script=script))
                ok = report(name, median(ours), median(theirs)) and ok
            return 0 if ok else 1
        finally:
            if bare is not None:
                bare.terminate()
                bare.wait(timeout=15)
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--rounds", type=int, default=3, help="turns of ours and bare per endpoint (default 3)"
    )
    parser.add_argument("--log-level", default="INFO", help="the server's (default INFO)")
    return bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
