"""A pydantic ValidationError as one line that names each key: recipes and ablation specs alike."""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


def _section(field: FieldInfo | None) -> type[BaseModel] | None:
    """The model a field holds (alone or as `Model | None`), None for a plain value."""
    if field is None:
        return None
    kinds = typing.get_args(field.annotation) or (field.annotation,)  # `Model | None`, or the model alone
    return next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)


def _walk(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel], FieldInfo | None]:
    """The innermost model and field that `loc` leads through ('grid', 'loss.alpha', 0 -> the grid field)."""
    field = None
    for part in loc:
        field = model.model_fields.get(str(part))
        if (inner := _section(field)) is None:
            break
        model = inner
    return model, field


def _unknown_key(model: type[BaseModel], loc: tuple) -> str:
    """'unknown key; did you mean ...? (keys of that section: ...)', from the schema itself."""
    section, field = _walk(model, loc[:-1])
    if loc[:-1] and _section(field) is None:
        return "unknown key"
    known = list(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    where = ".".join(map(str, loc[:-1])) or "top-level"
    return "unknown key" + (f"; did you mean '{close[0]}'?" if close else "") + f" ({where} keys: {', '.join(known)})"


def problems(err: ValidationError, model: type[BaseModel]) -> str:
    """'key: what is wrong (what the key holds); ...' for every error of `model`'s validation: pydantic's
    words say what is wrong with a value, a field's description what it should be. Checks of a whole
    model name their keys themselves."""
    lines, described = [], set()
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            msg = _unknown_key(model, e["loc"])
        else:
            msg = e["msg"].removeprefix("Value error, ")
            field = _walk(model, e["loc"])[1]
            if field is not None and field.description and id(field) not in described:  # once per key
                described.add(id(field))
                msg += f" ({field.description})"
        lines.append(f"{key}: {msg}" if key else msg)
    return "; ".join(lines)
