"""Reading a JSON document (manifest, registry, training configuration) with one-sentence errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import H3DEError


def read_json_document(path: str | os.PathLike, error: type[H3DEError], what: str, missing_hint: str = "") -> object:
    """The JSON value in the UTF-8 file `path`.

    A missing, non-UTF-8 or malformed file raises `error` with one sentence naming `what` (such as
    "Model manifest") and the file; `missing_hint` ends the sentence about a missing file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist{missing_hint}.") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as problem:
        raise error(f"{what} {path} is not valid JSON ({problem.msg} at line {problem.lineno}, "
                    f"column {problem.colno}).") from None
    except RecursionError:
        raise error(f"{what} {path} nests lists or objects too deeply to be read.") from None
