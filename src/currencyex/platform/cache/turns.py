"""Redis commands called in one turn of the event loop, sent in one pipeline.

A command sent alone costs redis-py's client about 50 us of CPU with 32 callers at once (its
connection pool, packing, the reply's parsing); in one pipeline of many, about a third of that
(bench/redis_calls.py). The pipeline is not a transaction: each command is atomic on its own,
as when sent alone, and each caller gets its own reply or error; an error of the connection
fails them all, as it would have each of them on a connection of its own. Nothing is retried.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from currencyex.kernel.turns import TurnBatches, Waiting
from currencyex.platform.cache.redis_url import RedisClient


class _Call(NamedTuple):
    name: str  # the client's method
    args: tuple[Any, ...]
    options: dict[str, Any]
    script: AsyncScript | None  # the script of an EVALSHA, loaded if Redis does not know it


class RedisTurns:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        # redis-py refuses EVALSHA in a Cluster's pipeline: there each script runs alone.
        self._scripts_alone = isinstance(redis, RedisCluster)
        self._turns: TurnBatches[None, _Call, Any] = TurnBatches(self._send)

    async def command(self, name: str, *args: Any, **options: Any) -> Any:
        """The reply of the client's `name` command (`get`, `set`, ...)."""
        return await self._turns.call(None, _Call(name, args, options, None))

    async def script(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """The reply of `script` run on `keys` with `args` (EVALSHA; loaded when Redis, or a
        Cluster node, has not seen it: then it did not run)."""
        if self._scripts_alone:
            return await script(keys, args)
        call = _Call("evalsha", (script.sha, len(keys), *keys, *args), {}, script)
        return await self._turns.call(None, call)

    async def close(self) -> None:
        """Wait for the pipelines on their way."""
        await self._turns.close()

    async def _send(self, _key: None, batch: list[Waiting[_Call, Any]]) -> None:
        if len(batch) == 1:
            call, answer = batch[0]
            try:
                reply = await getattr(self.redis, call.name)(*call.args, **call.options)
            except NoScriptError as exc:
                reply = await self._loaded_and_run(call, exc)
            if not answer.done():
                answer.set_result(reply)
            return
        pipe = self.redis.pipeline(transaction=False)
        for call, _ in batch:
            getattr(pipe, call.name)(*call.args, **call.options)
        replies = await pipe.execute(raise_on_error=False)
        for (call, answer), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):
                try:
                    reply = await self._loaded_and_run(call, reply)
                except Exception as exc:
                    reply = exc
            if answer.done():
                continue
            if isinstance(reply, Exception):
                answer.set_exception(reply)
            else:
                answer.set_result(reply)

    async def _loaded_and_run(self, call: _Call, error: NoScriptError) -> Any:
        if call.script is None:
            raise error
        await self.redis.script_load(call.script.script)
        return await getattr(self.redis, call.name)(*call.args, **call.options)
