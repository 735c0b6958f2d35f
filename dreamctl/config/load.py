"""Recipe files: a name or a path -> YAML -> `extends:` resolved -> overrides -> Recipe.

    recipe = load_recipe("conservative", overrides=["train.batch_size=64"])

`extends: NAME` inherits from another recipe (deep merge, child wins); overrides are
applied last, after inheritance, and are validated like the file itself. The built-in
recipes ship inside the package (dreamctl/recipes), so a plain `pip install` finds them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml

from dreamctl.config.metrics import check_eval_section
from dreamctl.config.schema import LOSS_PARAMS, Recipe, validate_recipe
from dreamctl.errors import ConfigError, DreamctlWarning

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def builtin_or_path(name_or_path: str | Path, folder: Path, what: str) -> Path:
    """A built-in name (a file NAME.yaml in `folder`) or a path to a YAML file; `what` names it in errors.

    A bare built-in name is the built-in even where the working folder holds something of that name
    (a run folder `tiny/`, say); a file of your own is given as `tiny.yaml` or with its folder."""
    candidate = Path(name_or_path)
    # Only a plain name is looked up among the built-ins: `../x` would reach any YAML file beside the package.
    plain = not any(sep in str(name_or_path) for sep in "/\\") and str(name_or_path) not in (".", "..")
    builtin = folder / f"{name_or_path}.yaml" if plain else None
    if builtin is not None and not candidate.suffix and builtin.is_file():
        return builtin
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if candidate.is_dir():
            raise ConfigError(f"{what} {candidate} is a folder; give a YAML file or a built-in name")
        if not candidate.is_file():
            raise ConfigError(f"{what} file {candidate} does not exist")
        return candidate
    if builtin is None or not builtin.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(f"unknown {what} '{name_or_path}'; built-in: {known} (or give a path to a .yaml file)")
    return builtin


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe name (`conservative`) or a path to a YAML file."""
    return builtin_or_path(name_or_path, RECIPES_DIR, "recipe")


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that gives one key twice (the YAML spec forbids it; PyYAML keeps the last silently)."""


def _refuse_duplicate_keys(node: yaml.Node | None, seen: set[int] | None = None) -> None:
    """DuplicateKeyError for a key written twice in one mapping of a composed document (nodes only:
    nothing is constructed). `lr: 1e-4` overridden by a forgotten `lr: 1e-3` further down would train
    with a setting nobody chose. A key overriding one merged in with `<<: *anchor` is what merge keys
    are for. An alias is the node of its anchor: each node is checked once (`seen`), so a recursive
    anchor ends."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, seen)
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in first_line:
                    raise DuplicateKeyError(None, None, f"key '{key_node.value}' is given twice (first at line "
                                            f"{first_line[key]})", key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
            _refuse_duplicate_keys(value_node, seen)


def safe_load(text: str) -> Any:
    """yaml.safe_load's own steps (SafeLoader: compose the node, construct it), refusing between them a key
    given twice in one mapping, which safe_load would let the last win. The text is parsed once."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _refuse_duplicate_keys(node)
        return None if node is None else loader.construct_document(node)
    except RecursionError:  # `[[[[...` thousands deep: PyYAML's parser recurses once per level
        raise yaml.MarkedYAMLError(problem="nested too deeply (a recipe is a few levels of sections)") from None
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str) -> Any:
    """safe_load with a one-line ConfigError naming the file, line and problem."""
    try:
        return safe_load(text)
    except yaml.YAMLError as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or "cannot be parsed"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}; fix the file") from None


def read_yaml(path: Path) -> Any:
    """A YAML file's content; ConfigError when it is not UTF-8 text or not valid YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a recipe or spec is YAML text") from None
    return parse_yaml(text, str(path))


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:  # would train every default: more likely a file not yet written than a choice
        raise ConfigError(f"{path} is empty; write `extends: NAME` (a built-in recipe) and the sections to change")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def _raw_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle ({' -> '.join(p.name for p in seen)})")
    data = _read_yaml(path)
    data.setdefault("name", path.stem)  # a recipe's name and description are its own file's, never inherited
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: key 'extends' must be a recipe name, got {parent!r}")
    is_file = parent.endswith((".yaml", ".yml"))
    try:
        parent_path = recipe_path(path.parent / parent if is_file else parent)
    except ConfigError as err:
        where = f" (a path is taken from the folder of {path.name})" if is_file else ""
        raise ConfigError(f"{path}: extends: {err}{where}") from None
    inherited = {k: v for k, v in _raw_recipe(parent_path, seen + (path.resolve(),)).items()
                 if k not in ("name", "description")}
    return _merge(inherited, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (['section', 'key'], value parsed as YAML)."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or any(not p for p in parts):
        raise ConfigError(f"bad override '{text}': expected section.key=value, e.g. train.batch_size=64")
    try:
        parsed = safe_load(value) if value.strip() else None
    except DuplicateKeyError as err:  # as a plain string it would only fail later, as "not a mapping"
        raise ConfigError(f"bad override '{text}': {err.problem}; give each key once") from None
    except yaml.YAMLError:  # not YAML (`description=[draft`): the text as given
        parsed = value
    return parts, parsed


def set_args(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The command-line flags that give these overrides (`--set key=value` each): for the commands
    dreamctl starts itself (torchrun's workers, ablate's jobs)."""
    return [arg for o in overrides for arg in ("--set", o)]


def option_args(field: str, value: Any) -> tuple[str, ...]:
    """A sample setting as the sample/evaluate arguments that give it: `--steps 600`, `--no-ema` (use_ema)."""
    name = "ema" if field == "use_ema" else field.replace("_", "-")
    return ((f"--{name}" if value else f"--no-{name}"),) if isinstance(value, bool) else (f"--{name}", str(value))


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """`raw` with each `section.key=value` applied in order. A mapping given for a section
    (`loss={alpha: 0.5}`) is merged into it as `extends:` merges: replacing the section would
    quietly reset every key it does not name to its default."""
    out = _merge(raw, {})
    _warn_repeated(overrides)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"bad override '{text}': '{part}' is not a section")
            else:
                child = node[part] = dict(child)
            node = child
        old = node.get(parts[-1])
        node[parts[-1]] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _warn_repeated(overrides: list[str] | tuple[str, ...]) -> None:
    """A key set twice to other values (a shell loop's `--set` after a Makefile's): the last wins, as a later
    key of `extends:` does, and is said to, so that the first is not believed."""
    first: dict[str, str] = {}
    for text in overrides:
        for key in override_keys([text]):
            if first.setdefault(key, text) != text:
                warnings.warn(f"--set {key} is given twice ('{first[key]}', then '{text}'): the last is used",
                              DreamctlWarning, stacklevel=3)


def load_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a recipe by name or path, resolve `extends:`, apply `section.key=value` overrides."""
    path = recipe_path(name_or_path)
    raw = _raw_recipe(path)
    source = str(path) + (f" with --set {' '.join(overrides)}" if overrides else "")
    recipe = check_to_train(validate_recipe(apply_overrides(raw, overrides), source), source)
    for key in override_keys(overrides):  # a typo'd kind or a setting of another method: an ablation of copies
        if (name := key.removeprefix("loss.")) in recipe.loss.unused():
            readers = [kind for kind, names in LOSS_PARAMS.items() if name in names]
            warnings.warn(f"--set {key}: loss.kind {recipe.loss.kind} does not read it (a setting of "
                          f"{' and '.join(readers)}); the run trains as if it were not set", DreamctlWarning, stacklevel=2)
    return recipe


def override_keys(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The dotted keys that overrides set (`loss={alpha: 0.5}` sets loss.alpha)."""
    keys = []
    for text in overrides:
        parts, value = parse_override(text)
        keys += [".".join([*parts, str(k)]) for k in value] if isinstance(value, dict) else [".".join(parts)]
    return keys


def check_to_train(recipe: Recipe, source: str) -> Recipe:
    """What a recipe about to train (or be planned, or resumed with new settings) is held to beyond the
    schema, which a stored run's recipe is not: its eval section as evaluate will read it (check_eval_section)
    and a sample section that starts from noise where x_t is noise (its progress grids draw with it)."""
    # Imported here, for two reasons: the check computes the schedule with torch, which the CLI loads only for
    # a command that runs; and dreamctl.diffusion imports dreamctl.config, so a module-level import is a cycle.
    from dreamctl.diffusion.start import check_sampler_start

    recipe = check_eval_section(recipe, source)
    check_sampler_start(recipe.diffusion, recipe.sample, source)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe, every default written out (what a run folder keeps)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def _resolved_recipe(data: Any, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: not a recipe (a mapping of sections)")
    return validate_recipe(data, source)


def recipe_from_yaml(text: str, source: str) -> Recipe:
    """A fully resolved recipe from its YAML text (a checkpoint's stored recipe)."""
    return _resolved_recipe(parse_yaml(text, source), source)


def recipe_from_file(path: Path) -> Recipe:
    """A fully resolved recipe file (a run folder's recipe.yaml)."""
    return _resolved_recipe(read_yaml(path), str(path))
