"""The WebSocket limits at the /v1/ws endpoint, over a real socket (the hub alone is unit-tested).

- With ws_max_connections_per_user=2, a third connection of a user is accepted and at once
  closed with 1013 (try again later) and the hub's reason; the first two stay open and receive
  the user's updates, another user connects and is served, and a slot freed by a client that
  leaves can be taken again.
- With a small ws_max_queued_messages, a client that stops reading is dropped, and the server
  ends its connection (a close frame, or the connection closed when the client never read the
  frame in time), while another connection of the same user receives every update promptly.

The volume for the second comes through the app's own path: the rates refresh reads an ECB
feed stand-in whose rates change at every refresh, and each change is pushed as a rate_update
to the connections subscribed to rates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import websockets

from currencyex.rates.providers import bundled_ecb_rates
from rates_support import ecb_feed, ecb_xml
from ws_support import messages_until, next_event, read_to_the_end, served, statuses

from conftest import eventually
from remit_support import FAST_PAYOUTS, funded_customer, quote, send

SUBSCRIBE_RATES = json.dumps({"action": "subscribe", "topic": "rates"})
TRY_AGAIN_LATER = 1013


def connect(ws_url: str, token: str, **options: Any) -> Any:
    return websockets.connect(f"{ws_url}?token={token}", **options)


async def connections_become(hub_connections: Callable[[], int], count: int) -> None:
    async def reached() -> bool:
        return hub_connections() == count

    await eventually(reached, within=10, what=f"{count} live connection(s) in the hub")


# The cap per user


async def test_a_third_connection_of_a_user_is_refused_while_the_first_two_keep_receiving(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend, **FAST_PAYOUTS, ws_max_connections_per_user=2)
    async with served(settings) as (api, ws_url):
        hub = api.container.hub
        alice_id, alice = await funded_customer(api)
        alice_token = alice["Authorization"].split()[1]
        bob_id, bob_token = await api.user_token()
        await api.submit_kyc(bob_token)

        def alices() -> int:
            return hub.connections(uuid.UUID(alice_id))

        async with connect(ws_url, alice_token) as first, connect(ws_url, alice_token) as second:
            await connections_become(alices, 2)
            async with connect(ws_url, alice_token) as third:
                with pytest.raises(websockets.ConnectionClosed) as refused:
                    await asyncio.wait_for(third.recv(), 10)
            assert refused.value.rcvd is not None, "closed without a close frame"
            assert refused.value.rcvd.code == TRY_AGAIN_LATER
            assert refused.value.rcvd.reason == "At most 2 live connections per user"
            assert alices() == 2

            async with connect(ws_url, bob_token) as bob:  # the cap is per user
                await connections_become(lambda: hub.connections(uuid.UUID(bob_id)), 1)

                sent = await send(api, alice, (await quote(api, alice))["quote_id"])
                assert sent.status_code == 201, sent.text
                for ws in (first, second):
                    assert await statuses(ws, sent.json()["txn_id"]) == [
                        "CREATED",
                        "PROCESSING",
                        "COMPLETED",
                    ]

                # Approved only now: had any of Alice's updates reached Bob, they would have
                # been queued on his connection ahead of his own.
                await api.approve_kyc(bob_id)
                seen = await messages_until(bob, "kyc_update")
                assert seen[-1]["data"]["status"] == "APPROVED"
                assert [m for m in seen if m["event"] == "transaction_update"] == []

            # A client that leaves frees its slot for the next one.
            await first.close()
            await connections_become(alices, 1)
            async with connect(ws_url, alice_token):
                await connections_become(alices, 2)


# Slow clients

BUNDLED = bundled_ecb_rates()


def rate_at(rate: Decimal, step: int) -> str:
    """`rate` written out to a hundred places, ending in `step`: a change at every step, and a
    rate_update of about 4 KB, so a few dozen fill the buffers between the hub and a client."""
    return f"{rate:.4f}{'0' * 90}{step:06d}"


def feed_at(step: int) -> bytes:
    rates = {code: rate_at(rate, step) for code, rate in BUNDLED.rates.items()}
    return ecb_xml(BUNDLED.as_of.isoformat(), rates)


def usd_at(step: int) -> Decimal:
    return Decimal(rate_at(BUNDLED.rates["USD"], step))


def usd_of(message: dict[str, Any]) -> Decimal:
    return Decimal(message["data"]["rates"]["USD"])


async def cramped_socket(ws_url: str) -> socket.socket:
    """A connection to the server with a small receive buffer and segment size, as on a poor
    link. Over loopback the server's kernel would otherwise buffer megabytes for a client that
    does not read before the hub notices anything; this way it is tens of KB."""
    host, port = ws_url.removeprefix("ws://").split("/", 1)[0].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 256)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


@pytest.mark.parametrize("reads_again", ["at-once", "after-the-close-timeout"])
async def test_a_client_that_stops_reading_is_dropped_while_the_users_other_one_gets_every_update(
    make_settings: Callable[..., Any], reads_again: str
) -> None:
    # Embedded only: the flood rewrites the live rates, which on the real services sit in a
    # Redis key every process on this machine shares.
    async with ecb_feed() as feed:
        feed.body = feed_at(0)
        settings = await make_settings(
            "embedded", rates_provider="http", rates_url=feed.url, ws_max_queued_messages=4
        )
        async with served(settings) as (api, ws_url):
            hub = api.container.hub
            # Long enough that only the queue bound can drop the silent client in this test, on
            # a machine as loaded as it may be (the suite runs two files at once).
            hub.settings = dataclasses.replace(hub.settings, send_timeout=60.0)
            user_id, token = await api.user_token()

            async def change_rates(step: int) -> None:
                feed.body = feed_at(step)
                await api.container.rates.refresh()

            async with (
                connect(
                    ws_url,
                    token,
                    sock=await cramped_socket(ws_url),
                    compression=None,  # deflate would shrink the flood to nothing
                    max_queue=1,
                ) as slow,
                connect(ws_url, token) as fast,
            ):
                for ws in (slow, fast):
                    await ws.send(SUBSCRIBE_RATES)
                step = 1
                await change_rates(step)
                for ws in (slow, fast):  # both subscribed; from here on `slow` reads nothing
                    assert usd_of(await next_event(ws, "rate_update")) == usd_at(step)

                # Dropped by the queue bound, so before the send timeout could have done it.
                loop = asyncio.get_running_loop()
                deadline = loop.time() + hub.settings.send_timeout
                while hub.connections(uuid.UUID(user_id)) == 2:
                    assert loop.time() < deadline, "the silent client was not dropped in time"
                    step += 1
                    await change_rates(step)
                    assert usd_of(await next_event(fast, "rate_update", within=2)) == usd_at(step)
                dropped_at = step
                for step in range(dropped_at + 1, dropped_at + 11):  # nothing waits on it
                    await change_rates(step)
                    assert usd_of(await next_event(fast, "rate_update", within=2)) == usd_at(step)

                if reads_again != "at-once":
                    # The client's silence under test: longer than the hub waits for the close
                    # frame to get through.
                    await asyncio.sleep(hub.settings.close_timeout + 1)
                left, closed = await read_to_the_end(slow)

        # It got what was buffered before the drop, in order, and nothing from then on.
        seen = [usd_of(message) for message in left if message["event"] == "rate_update"]
        assert seen == [usd_at(s) for s in range(2, 2 + len(seen))]
        assert 2 + len(seen) <= dropped_at
        if reads_again == "at-once":
            assert closed.rcvd is not None, "closed without a close frame"
            assert (closed.rcvd.code, closed.rcvd.reason) == (TRY_AGAIN_LATER, "too slow")
        else:  # the close frame could not get through in time: the connection ends all the same
            assert closed.rcvd is None or closed.rcvd.code == TRY_AGAIN_LATER
