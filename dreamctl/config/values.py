"""Which Python values a recipe field of a given type annotation refuses beyond what pydantic's lax mode does."""

from __future__ import annotations

from typing import Any, get_args


def mentions(annotation: Any, kind: type) -> bool:
    """Whether a field's type is `kind` or holds it (int | None, tuple[Annotated[float, ...], ...])."""
    return annotation is kind or any(mentions(a, kind) for a in get_args(annotation))


def bool_for_number(annotation: Any, value: Any) -> str | None:
    """Why `value` is refused, where it is (or holds) a boolean and the field takes numbers but no booleans:
    lax mode, kept for YAML's `lr: 1e-3` (a string to PyYAML), would read `batch_size: true` as 1."""
    flag = next((v for v in (value if isinstance(value, (list, tuple)) else (value,)) if isinstance(v, bool)), None)
    if flag is None or mentions(annotation, bool) or not (mentions(annotation, int) or mentions(annotation, float)):
        return None
    wanted = "an integer" if mentions(annotation, int) else "a number"
    return f"{str(flag).lower()} is a boolean, not a number; give {wanted}"
