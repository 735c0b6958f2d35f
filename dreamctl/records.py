"""Reading the JSON records dreamctl writes (run.json, sample.json, eval/*.json, metrics.jsonl): an error that
names the file and what to do with it, instead of json's traceback. Written with dreamctl.atomic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dreamctl.errors import CheckpointError

_JSON_FIX = {  # by file name, else by folder name
    "run.json": "restore it from a copy: it holds the run's id, which its sample folders record",
    "sample.json": "move the folder aside and draw it again with `dreamctl sample`",
    "eval": "move the file out of eval/ and run `dreamctl evaluate` again",
}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by dreamctl; CheckpointError naming the file, and what to do, otherwise."""
    fix = _JSON_FIX.get(path.name) or _JSON_FIX.get(path.parent.name, "is this a dreamctl run folder?")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def jsonl_values(path: Path) -> list[tuple[int, Any]]:
    """(line number in the file, value) of each non-blank line of a JSON-lines log. A cut last line
    (a process killed mid-append) is dropped; a bad line before it is an error naming it."""
    if not path.is_file():
        return []
    lines = [(number, line) for number, line in enumerate(path.read_bytes().splitlines(), 1) if line.strip()]
    values = []
    for number, line in lines:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            # Not what a cut leaves, even on the last line: json.dumps writes ASCII, and a cut keeps a prefix of it.
            raise CheckpointError(f"{path} line {number} is not text (binary bytes, not a line dreamctl wrote); "
                                  "remove or repair that line") from None
        try:
            values.append((number, json.loads(text)))
        except json.JSONDecodeError:
            if number == lines[-1][0]:
                break
            raise CheckpointError(f"{path} line {number} is not JSON; remove or repair that line") from None
    return values


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log (metrics.jsonl): its JSON objects, a cut last line dropped."""
    return [value for _, value in jsonl_values(path) if isinstance(value, dict)]
