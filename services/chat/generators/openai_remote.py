"""Any OpenAI-compatible server over HTTP: vLLM, llama.cpp's server, or our own `kb engine-serve`.

Streams with `stream_options.include_usage` and reads `usage.prompt_tokens_details.cached_tokens`
(vLLM and `kb engine-serve` fill it; servers that do not report 0). Closing the generation closes the
HTTP response, and a server that watches for disconnects (ours does) cancels the request.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from services.chat.generators.base import (
    AsyncGenGeneration,
    BadGenerationRequest,
    Delta,
    Generation,
    GenerationRequest,
    Generator,
    GeneratorBusy,
    GeneratorError,
    GeneratorTimeout,
    Usage,
)


def usage_from_openai(data: dict[str, Any] | None) -> Usage:
    data = data or {}
    details = data.get("prompt_tokens_details") or {}
    return Usage(
        int(data.get("prompt_tokens") or 0),
        int(details.get("cached_tokens") or 0),
        int(data.get("completion_tokens") or 0),
    )


class OpenAIRemoteGenerator(Generator):
    name = "remote"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.model = model
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.client = client or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout
        )
        self._owns_client = client is None

    @classmethod
    def from_settings(cls, settings: Any) -> OpenAIRemoteGenerator:
        return cls(
            settings.generator_url,
            settings.generator_model_name or settings.generator_model or "default",
            settings.generator_api_key,
            settings.generator_timeout_s,
            settings.generator_connect_timeout_s,
        )

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = request.stop
        return body

    async def start(self, request: GenerationRequest) -> Generation:
        try:
            req = self.client.build_request("POST", "/chat/completions", json=self._body(request))
            response = await self.client.send(req, stream=True)
        except httpx.TimeoutException as exc:
            raise GeneratorTimeout(f"generator at {self.client.base_url} timed out") from exc
        except httpx.HTTPError as exc:
            raise GeneratorError(f"generator at {self.client.base_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")
            await response.aclose()
            detail = _detail(body) or f"HTTP {response.status_code}"
            if response.status_code in (429, 503):
                retry = response.headers.get("retry-after", "1")
                raise GeneratorBusy(
                    f"remote generator busy: {detail}", float(retry) if retry.isdigit() else 1.0
                )
            if response.status_code in (400, 413, 422):
                raise BadGenerationRequest(f"remote generator refused the request: {detail}")
            raise GeneratorError(f"remote generator failed: {detail}")
        return AsyncGenGeneration(self._events(response), lambda: _close_soon(response))

    async def _events(self, response: httpx.Response):  # noqa: ANN202
        finish: str | None = None
        usage: Usage | None = None
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise GeneratorError(f"remote generator error: {_detail(json.dumps(chunk))}")
                if chunk.get("usage"):
                    usage = usage_from_openai(chunk["usage"])
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    finish = choice.get("finish_reason") or finish
                    if text:
                        yield Delta(text)
            yield Delta("", finish or "stop", usage or Usage())
        except httpx.TimeoutException as exc:
            raise GeneratorTimeout("remote generator timed out while streaming") from exc
        except httpx.HTTPError as exc:
            raise GeneratorError(f"remote generator stream broke: {exc}") from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()


def _close_soon(response: httpx.Response) -> None:
    """Close a response that was never read (the caller may be in a cancelled scope: no await)."""
    import asyncio

    asyncio.get_running_loop().create_task(response.aclose())


def _detail(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return body[:300]
