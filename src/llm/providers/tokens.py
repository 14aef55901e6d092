"""A tokenizer estimate, used before a task runs (budget reservation) and by the fake provider.

Real tokenizers differ per model and are not available offline, so we use the common
rule of thumb for English text: about four characters per token (OpenAI's and
Anthropic's documentation both quote it). The estimate is ``ceil(len(text) / 4)``
counted in Unicode code points, never less than 1 (an empty prompt still costs a
request), and deterministic: the same text always gives the same number.

Real providers report the true counts in their responses; those are what get charged.
"""

from __future__ import annotations

from collections.abc import Iterable

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def estimate_prompt_tokens(parts: Iterable[str]) -> int:
    """The estimate for a whole prompt (system text and messages, joined by newlines);
    empty parts are skipped, so a single prompt estimates exactly like ``estimate_tokens``."""
    return estimate_tokens("\n".join(part for part in parts if part))
