"""The API's JSON parser: DRF's, plus the limits the database and the interpreter need.

Every JSON body of every endpoint goes through here, so one check covers fields no
serializer inspects (``metadata`` and any free-form object): PostgreSQL refuses NUL in
text and JSONB, and a lone UTF-16 surrogate cannot be encoded as UTF-8, so either would
fail at the database as a 500. Nesting is capped because the standard library parser
recurses: 20,000 brackets (40 KB, well under the body limit) raise RecursionError.
Failures are ``ParseError`` (400, ``parse_error``) naming where the offending string is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_JSON_DEPTH = 64
# NUL, or a surrogate code point: json.loads pairs a valid \ud83d\ude80 into one
# character, so any surrogate left in a str is an unpaired one.
_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")


def _where(path: list[str]) -> str:
    """The dotted path for the error detail; the offending characters are shown escaped
    (the detail itself must stay encodable) and long keys are cut."""
    segments = (_FORBIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", segment[:40]) for segment in path)
    return ".".join(segments) or "the document"


def _check_string(value: str, path: list[str]) -> None:
    match = _FORBIDDEN.search(value)
    if match is None:
        return
    what = "NUL (\\u0000)" if match.group() == "\x00" else "an unpaired surrogate"
    raise ParseError(f"JSON parse error - strings must not contain {what}: at {_where(path)}.")


def validate_document(document: Any) -> None:
    """Raise ``ParseError`` when ``document`` nests deeper than MAX_JSON_DEPTH or holds a
    string (key or value) PostgreSQL cannot store. Iterative: no recursion to exhaust."""
    stack: list[tuple[Any, list[str], int]] = [(document, [], 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _check_string(value, path)
            continue
        if not isinstance(value, Mapping | list):
            continue
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels: at {_where(path)}.")
        if isinstance(value, Mapping):
            for key, item in value.items():
                key_path = [*path, str(key)]
                _check_string(str(key), key_path)
                stack.append((item, key_path, depth))
        else:
            stack.extend((item, [*path, str(index)], depth) for index, item in enumerate(value))


class JSONParser(parsers.JSONParser):
    """``rest_framework.parsers.JSONParser`` (strict: no NaN or Infinity) with the checks
    above. Wired as the only parser in REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            document = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels.") from exc
        validate_document(document)
        return document
