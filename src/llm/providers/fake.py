"""The fake provider (SPEC §6): answers like a model, offline, and obeys test directives.

The answer is a deterministic string of words picked by a hash of the model, system
prompt and messages (same request → same text), never longer than ``max_tokens`` by
``estimate_tokens``; ``fake-large`` tends to answer at greater length than other
models. Token counts come from the same estimate. The call takes the configured
latency; ``stream`` spreads it over one chunk per word.

Directives, anywhere in the last user message, valid with any model, for ``complete``
and ``stream`` alike:

- ``#fake:sleep=<ms>``          take this long instead of the configured latency.
- ``#fake:error=<status>[:<n>][@<model>]`` fail with HTTP ``status`` (400-599) on
                                 attempts 1..n, on every attempt if ``n`` is omitted;
                                 with ``@<model>`` only calls to that model fail (a
                                 model outage, for fallbacks and circuit breakers); a
                                 429 carries ``retry_after=1``. Combined with ``sleep``,
                                 it fails after sleeping.
- ``#fake:hang``                 never answer (until the call's guard aborts it, or
                                 the Celery soft time limit's signal interrupts it).
- ``#fake:tokens=<in>,<out>``    report these token counts.
- ``#fake:malformed[:<n>]``      a malformed answer on attempts 1..n (every attempt if n
                                 is omitted): the stream ends without its final message
                                 and usage (``complete`` raises ProviderUnavailable).
- ``#fake:echo``                 answer with what the provider received, as JSON
                                 ``{"model", "system", "messages": [[role, content], ...]}``
                                 (tests of multi-turn context read it back).

Anything else that starts with ``#fake:`` (unknown names, missing or malformed values
such as ``sleep=fast`` or ``error=42``, trailing junk such as ``sleep=10ms``) is
ignored, like ordinary text. When a directive appears twice, the last one wins.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from llm.providers.base import (
    Completion,
    CompletionRequest,
    ProviderUnavailable,
    TextDelta,
    current_guard,
    error_for_status,
)
from llm.providers.tokens import estimate_prompt_tokens, estimate_tokens

HANG_STEP_S = 0.1
RATE_LIMIT_RETRY_AFTER_S = 1.0

# One pattern for every directive; the look-ahead rejects trailing junk (``sleep=10ms``).
_DIRECTIVE = re.compile(
    r"#fake:(?:"
    r"sleep=(?P<sleep>\d{1,9})"
    r"|error=(?P<status>\d{3})(?::(?P<times>\d{1,9}))?(?:@(?P<error_model>[A-Za-z0-9][\w.\-]*\w))?"
    r"|tokens=(?P<tokens_in>\d{1,12}),(?P<tokens_out>\d{1,12})"
    r"|(?P<hang>hang)"
    r"|(?P<echo>echo)"
    r"|(?P<malformed>malformed)(?::(?P<malformed_times>\d{1,9}))?"
    r")(?![\w=@]|[:,]\w)"
)

_VOCABULARY = (
    "the a switch yard signal track train freight car engine route junction platform "
    "schedule arrives departs quietly slowly before after along through under over "
    "north south east west morning evening steady bright heavy light long short "
    "carries sorts couples waits moves turns holds clears loads unloads marks counts "
    "crew lantern whistle timetable ledger token budget request answer model worker "
    "queue lever points siding buffer coupling wagon yardmaster shunter"
)
_WORDS = _VOCABULARY.split()


@dataclass(frozen=True, slots=True)
class Directives:
    sleep_ms: int | None = None
    error_status: int | None = None
    error_attempts: int | None = None  # None: every attempt
    hang: bool = False
    tokens: tuple[int, int] | None = None
    error_model: str | None = None  # None: every model
    echo: bool = False
    malformed: bool = False
    malformed_attempts: int | None = None  # None: every attempt

    @classmethod
    def parse(cls, text: str) -> Directives:
        sleep_ms = error_status = error_attempts = None
        hang = echo = malformed = False
        malformed_attempts: int | None = None
        tokens: tuple[int, int] | None = None
        error_model: str | None = None
        for match in _DIRECTIVE.finditer(text):
            if match["sleep"] is not None:
                sleep_ms = int(match["sleep"])
            elif match["status"] is not None:
                status = int(match["status"])
                if 400 <= status <= 599:
                    error_status = status
                    error_attempts = int(match["times"]) if match["times"] is not None else None
                    error_model = match["error_model"]
            elif match["tokens_in"] is not None:
                tokens = (int(match["tokens_in"]), int(match["tokens_out"]))
            elif match["hang"] is not None:
                hang = True
            elif match["echo"] is not None:
                echo = True
            elif match["malformed"] is not None:
                malformed = True
                malformed_attempts = int(match["malformed_times"]) if match["malformed_times"] else None
        return cls(
            sleep_ms=sleep_ms,
            error_status=error_status,
            error_attempts=error_attempts,
            hang=hang,
            tokens=tokens,
            error_model=error_model,
            echo=echo,
            malformed=malformed,
            malformed_attempts=malformed_attempts,
        )

    def malformed_on(self, attempt: int) -> bool:
        return self.malformed and (self.malformed_attempts is None or attempt <= self.malformed_attempts)

    def fails_on(self, attempt: int, model: str | None = None) -> bool:
        if self.error_status is None:
            return False
        if self.error_model is not None and model != self.error_model:
            return False
        return self.error_attempts is None or attempt <= self.error_attempts


class FakeProvider:
    name = "fake"

    def __init__(self, latency_ms: int, sleep: Callable[[float], None] | None = None) -> None:
        self.latency_ms = max(latency_ms, 0)
        self._sleep = sleep or _guarded_sleep

    def complete(self, request: CompletionRequest) -> Completion:
        directives = self._begin(request)
        self._pause(self._duration_s(directives))
        if directives.malformed_on(request.attempt):
            raise ProviderUnavailable("fake: malformed response (#fake:malformed directive)")
        return self._completion(request, directives)

    def stream(self, request: CompletionRequest) -> Iterator[TextDelta | Completion]:
        directives = self._begin(request)
        completion = self._completion(request, directives)
        pieces = re.findall(r"\s*\S+", completion.text)
        step = self._duration_s(directives) / max(len(pieces), 1)
        if not pieces:
            self._pause(step)
        for piece in pieces:
            self._pause(step)
            yield TextDelta(piece)
        if directives.malformed_on(request.attempt):
            return  # a malformed answer: the stream ends without its closing message and usage
        yield completion

    def _begin(self, request: CompletionRequest) -> Directives:
        """Parse the directives and play out the ones that end the call (hang, error)."""
        directives = Directives.parse(request.last_user_message)
        if directives.hang:
            self._hang()
        if directives.error_status is not None and directives.fails_on(request.attempt, request.model):
            if directives.sleep_ms is not None:
                self._pause(directives.sleep_ms / 1000)
            status = directives.error_status
            raise error_for_status(
                status,
                f"fake: HTTP {status} from {request.model} (#fake:error directive, attempt {request.attempt})",
                retry_after=RATE_LIMIT_RETRY_AFTER_S if status == 429 else None,
            )
        return directives

    def _duration_s(self, directives: Directives) -> float:
        ms = directives.sleep_ms if directives.sleep_ms is not None else self.latency_ms
        return ms / 1000

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)

    def _hang(self) -> NoReturn:
        while True:
            self._sleep(HANG_STEP_S)

    def _completion(self, request: CompletionRequest, directives: Directives) -> Completion:
        text, truncated = _echo(request) if directives.echo else _answer(request)
        if directives.tokens is not None:
            input_tokens, output_tokens = directives.tokens
        else:
            prompt = [request.system or "", *(m.content for m in request.messages)]
            input_tokens, output_tokens = estimate_prompt_tokens(prompt), estimate_tokens(text)
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=request.model,
            finish_reason="length" if truncated else "stop",
        )


def _guarded_sleep(seconds: float) -> None:
    """Sleep like a network wait: the call's guard (deadline, cancel) ends it early."""
    guard = current_guard()
    guard.check()
    if seconds > 0:
        guard.sleep(seconds)


def _echo(request: CompletionRequest) -> tuple[str, bool]:
    received = {
        "model": request.model,
        "system": request.system,
        "messages": [[m.role, m.content] for m in request.messages],
    }
    return json.dumps(received, separators=(",", ":")), False


def _answer(request: CompletionRequest) -> tuple[str, bool]:
    """Deterministic words for this request; True when ``max_tokens`` cut the answer short."""
    material = "\0".join([request.model, request.system or "", *(m.content for m in request.messages)])
    seed = int.from_bytes(hashlib.sha256(material.encode()).digest()[:8])
    rng = random.Random(seed)  # seeded with an int: the same sequence in every process
    wanted = rng.randint(40, 160) if request.model == "fake-large" else rng.randint(12, 60)
    limit = min(wanted, request.max_tokens)
    text, capitalize = "", True
    while True:
        word = rng.choice(_WORDS)
        word = word.capitalize() if capitalize else word
        capitalize = rng.random() < 0.12
        if capitalize:
            word += "."
        candidate = f"{text} {word}" if text else word
        if estimate_tokens(candidate) > limit:
            break
        text = candidate
    if text and not text.endswith(".") and estimate_tokens(text + ".") <= limit:
        text += "."
    return text, wanted > request.max_tokens
