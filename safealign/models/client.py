"""An OpenAI-compatible chat completions client: what the generation stage (data/generate.py) and
the LLM judge (eval.safety.judge: endpoint, eval/judges.py) send their requests through.

Requests go to `<base_url>/chat/completions` (vLLM, TGI, transformers serve, a hosted API),
`concurrency` at a time, retried with exponential backoff on 408, 429, 5xx, timeouts and dropped
connections (a Retry-After header wins); any other HTTP error is final and explained. Every
answer is appended to a cache (JSON lines, keyed by the hash of the request) the moment it
arrives, so a killed or failed run resumes without paying twice; a line cut short by a kill is
skipped when read. API keys come from an environment variable the recipe names, go into a request
header and are written nowhere. Imports nothing of safealign.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

RETRY_STATUS = (408, 429, 500, 502, 503, 504)  # worth another try; any other error is final
MAX_WAIT = 60.0  # seconds: the longest pause between two tries


class ClientError(RuntimeError):
    """The requests cannot go on; the message names the request, key or endpoint."""


def request_key(blob: dict) -> str:
    """A cache key: the hash of everything an answer depends on (never where it was asked)."""
    return hashlib.sha256(json.dumps(blob, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def api_key(env: str | None, key: str, error=ClientError) -> str | None:
    """The API key from the environment variable the recipe names at `key` (None when it names
    none); a named variable that is not set is an error. Read, never written."""
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise error(
            f"{key}: the environment variable {env} is not set (export it before make; it is read, never written)"
        )
    return value


def backoff_delay(attempt: int, base: float, retry_after: str | None = None, cap: float = MAX_WAIT) -> float:
    """Seconds to wait before try `attempt + 1`: the server's Retry-After (in seconds) where it
    sends one, else base x 2^attempt; never more than `cap`."""
    if retry_after:
        try:
            return min(cap, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP date: fall back to our own schedule
    return min(cap, base * 2**attempt)


class Cache:
    """Answers by request key, one JSON object per line, appended as each arrives. A line cut
    short by a kill is skipped when read; several processes may append at once (flock)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> dict[str, dict]:
        out = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the half-written last line of a killed run
                if isinstance(entry, dict) and "key" in entry and isinstance(entry.get("text"), str):
                    out[entry["key"]] = entry
        return out

    def add(self, entry: dict) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    f.write(line)
                    f.flush()
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)


class Endpoint:
    """An OpenAI-compatible chat completions API, with retries. `keys`: where the recipe sets it
    (data.generate, eval.safety.endpoint), for the messages."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
        sleep=None,
        keys: str = "data.generate",
        error=ClientError,
    ):
        import httpx

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.max_retries, self.backoff, self.keys, self.error = max_retries, backoff, keys, error
        self.sleep = sleep or time.sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.key_sent = bool(api_key)  # what a 401 means: no key, or a key the server refused
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.retries = 0  # retries made, over every request
        self._count = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def chat(self, body: dict, what: str) -> tuple[str, int]:
        """The answer's text and the number of tries it took; `error` (ClientError) when the
        server refuses the request or the retries run out."""
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                r = self.client.post(self.url, json=body)
            except httpx.TransportError as e:  # refused/dropped connection, timeout
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    return content(r, self.url, what, self.error), attempt + 1
                last = f"HTTP {r.status_code}: {snippet(r.text)}"
                if r.status_code not in RETRY_STATUS:
                    raise self.error(f"{self.url}: {what}: {last}{hint(r.status_code, self.key_sent)}")
                retry_after = r.headers.get("retry-after")
            if attempt == self.max_retries:
                break
            with self._count:
                self.retries += 1
            self.sleep(backoff_delay(attempt, self.backoff, retry_after))
        nothing = (
            "; nothing answers there: start the server (`make serve` here; `vllm serve <model>`) or fix base_url"
            if last.startswith("ConnectError")
            else ""
        )
        raise self.error(
            f"{self.url}: {what}: gave up after {self.max_retries + 1} tries ({self.max_retries} retries, "
            f"{self.keys}.max_retries); last: {last}{nothing}"
        )


def snippet(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text[:n] + ("..." if len(text) > n else "")


def hint(status: int, key_sent: bool = False) -> str:
    return {
        401: (
            " (the server did not accept the key sent, from api_key_env's variable: check its value"
            " and that this server is the one the key is for)"
            if key_sent
            else " (the server wants an API key: name its environment variable in api_key_env)"
        ),
        403: " (the key in api_key_env's variable is not allowed to use this model)",
        404: " (check base_url, which ends in /v1 for most servers, and the model's name on the server)",
        400: " (the server refused the request's fields; see its message)",
        422: " (the server refused the request's fields; see its message)",
    }.get(status, "")


def content(r, url: str, what: str, error=ClientError) -> str:
    try:
        text = r.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise error(f"{url}: {what}: not an OpenAI chat completion response: {snippet(r.text)}") from None
    if not isinstance(text, str):
        raise error(f"{url}: {what}: the answer's content is {type(text).__name__}, not text")
    return text


def run_remote(jobs: list[dict], endpoint: Endpoint, concurrency: int, record, log, label: str) -> None:
    """Send each job's `body` (its `what` names it in errors, its `role` the progress line), `concurrency` at a time, and
    `record(job, text, tries)` each answer as it arrives (into a Cache). On the first failure no
    new request starts; those in flight finish (and are recorded), then it raises."""
    done, total = 0, len(jobs)
    step = max(1, total // 10)
    stop = threading.Event()  # set by the first failure: requests not yet sent are not sent

    def one(job):
        if stop.is_set():
            return
        try:
            text, tries = endpoint.chat(job["body"], job["what"])
        except BaseException:
            stop.set()
            raise
        record(job, text, tries)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        pending = {pool.submit(one, j) for j in jobs}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in finished:
                if f.exception() is not None:
                    for p in pending:
                        p.cancel()
                    wait(pending)
                    raise f.exception()
                done += 1
                if done % step == 0 or done == total:
                    log(f"  {label}: {done}/{total} {jobs[0]['role']} received")
