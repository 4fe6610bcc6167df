"""Teacher behind any OpenAI-compatible chat-completions server (vLLM, SGLang, hosted).

`teach.concurrency` requests in flight (asyncio workers). The openai client's own retries are
off (max_retries=0) and we retry here, because we also retry what the client cannot see as
an error: a 200 whose body is garbage. Retried with exponential backoff and jitter (honouring
Retry-After / retry-after-ms): timeouts, connection errors, 408, 409, 429, 5xx, malformed
bodies; other 4xx (400, 401, 404, 422, ...) fail at once naming the pid. When the retry budget
of one request is spent the run fails, and every answer received so far is already in the cache.

The API key is read from the environment variable named by `teach.api_key_env` and handed to
the client only; it is never stored, logged or echoed in an error.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random

import openai
from openai.types.chat import ChatCompletion

from svrd.errors import SvrdError
from svrd.teach.base import Deliver, Job, TeacherError

RETRY_STATUSES = {408, 409, 429}
MAX_RETRY_AFTER_S = 60.0


class MalformedResponse(Exception):
    pass


def user_message(job: Job) -> dict:
    """The chat message: the image (base64 PNG data URL) first, then the prompt text."""
    content: list[dict] = []
    image = job.rec.get("image")
    if image:
        url = "data:image/png;base64," + base64.b64encode(image).decode("ascii")
        content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": job.prompt})
    return {"role": "user", "content": content}


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if 0 <= seconds <= MAX_RETRY_AFTER_S:
            return seconds
    return None


def _classify(exc: BaseException) -> str | None:
    """A short reason when the error is worth retrying, None when it is final."""
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error ({exc})"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in RETRY_STATUSES or status >= 500:
            return f"HTTP {status}"
        return None
    if isinstance(exc, (openai.APIResponseValidationError, MalformedResponse, ValueError, TypeError)):
        return f"malformed response ({type(exc).__name__}: {str(exc)[:200]})"
    return None


class OpenAIBackend:
    name = "openai"
    cacheable = True

    def __init__(self, cfg, *, backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0):
        if not cfg.model:
            raise SvrdError("teach.backend=openai needs teach.model: the model name the server serves")
        if not cfg.base_url:
            raise SvrdError("teach.backend=openai needs teach.base_url, e.g. http://localhost:8000/v1")
        self.cfg = cfg
        self.model = str(cfg.model)
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.requests = 0  # HTTP attempts, retries included
        self.retries = 0

    def _clients(self) -> list[openai.AsyncOpenAI]:
        """One client per server: teach.base_url is one URL or a list of data-parallel servers
        (same model on each; the cache key holds no URL, so it does not matter which answers)."""
        key = os.environ.get(self.cfg.api_key_env or "") or "EMPTY"  # local servers need none
        urls = [self.cfg.base_url] if isinstance(self.cfg.base_url, str) else list(self.cfg.base_url)
        return [openai.AsyncOpenAI(base_url=url, api_key=key, timeout=float(self.cfg.timeout_s), max_retries=0)
                for url in urls]

    def _backoff(self, attempt: int, exc: BaseException) -> float:
        hinted = _retry_after(exc)
        if hinted is not None:
            return hinted
        return min(self.backoff_cap_s, self.backoff_base_s * 2.0**attempt) * random.uniform(0.5, 1.0)

    async def _ask(self, client: openai.AsyncOpenAI, job: Job) -> str:
        cfg = self.cfg
        extra = {"seed": job.sample} if cfg.temperature > 0 else {}
        attempt = 0
        while True:
            self.requests += 1
            try:
                # The same request as client.chat.completions.create(**body), through the client's
                # documented raw-body call: it skips the recursive TypedDict transform of the
                # params (a no-op for this plain JSON), ~1 ms of CPU per request, so that at
                # concurrency 32 the client issues requests faster than they come back.
                # Timeouts, auth headers and error classes are the client's own.
                resp = await client.post(
                    "/chat/completions",
                    cast_to=ChatCompletion,
                    body={
                        "model": self.model,
                        "messages": [user_message(job)],
                        "temperature": float(cfg.temperature),
                        "max_tokens": int(cfg.max_new_tokens),
                        **extra,
                    },
                )
                try:
                    text = resp.choices[0].message.content
                except (AttributeError, IndexError, KeyError, TypeError) as exc:
                    raise MalformedResponse(f"no choices[0].message.content in {str(resp)[:200]!r}") from exc
                if not isinstance(text, str):
                    raise MalformedResponse(f"message content is {type(text).__name__}, not text")
                return text
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised as a named error
                reason = _classify(exc)
                if reason is None:
                    status = getattr(exc, "status_code", None)
                    detail = f"HTTP {status}: {str(exc)[:300]}" if status else f"{type(exc).__name__}: {exc}"
                    raise TeacherError(job.pid, f"request refused ({detail}); not retried") from None
                if attempt >= int(cfg.max_retries):
                    raise TeacherError(
                        job.pid, f"{reason}; gave up after {attempt + 1} attempts (teach.max_retries={cfg.max_retries})"
                    ) from None
                delay = self._backoff(attempt, exc)
                attempt += 1
                self.retries += 1
                await asyncio.sleep(delay)

    async def _run(self, jobs: list[Job], deliver: Deliver) -> None:
        todo = iter(jobs)  # shared by the workers; the event loop is single-threaded

        async def worker(client: openai.AsyncOpenAI) -> None:
            for job in todo:
                text = await self._ask(client, job)
                deliver(job, text)

        clients = self._clients()
        try:
            n_workers = max(1, min(int(self.cfg.concurrency), len(jobs)))
            # Workers are spread over the servers round-robin: concurrency counts all of them.
            workers = [asyncio.ensure_future(worker(clients[i % len(clients)])) for i in range(n_workers)]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                raise
        finally:
            for client in clients:
                await client.close()

    def generate(self, jobs: list[Job], deliver: Deliver) -> None:
        if jobs:
            asyncio.run(self._run(jobs, deliver))

    def close(self) -> None:
        pass
