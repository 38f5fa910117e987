"""KB_REQUEST_TIMEOUT_S: a request whose response has not *started* in time gets 504 and is cancelled.

Only the start counts: a streaming answer (SSE chat, job events) may run long once its first bytes
went out, and the generator has its own limit (KB_GENERATOR_TIMEOUT_S). Cancelling the handler's task
runs the usual cancel paths (a chat turn's generation is cancelled, nothing half-done is stored); a
sync handler's thread cannot be interrupted and finishes in the background, its result dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestTimeout:
    def __init__(self, app: ASGIApp, seconds: float, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.seconds = seconds
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.seconds <= 0 or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        started = asyncio.Event()

        async def send_marking(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, send_marking))
        waiter = asyncio.ensure_future(started.wait())
        try:
            done, _ = await asyncio.wait(
                {task, waiter}, timeout=self.seconds, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            task.cancel()
            raise
        finally:
            waiter.cancel()
        if not done:  # neither finished nor started: give up on it
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await _send_504(send, self.seconds)
            return
        await task  # finished, or started: let it stream to the end (and raise what it raises)


async def _send_504(send: Send, seconds: float) -> None:
    detail = f"request timed out: no response within {seconds:g} s (KB_REQUEST_TIMEOUT_S)"
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 504, "headers": headers})
    await send({"type": "http.response.body", "body": body})
