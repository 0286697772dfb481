"""Problems in an admin's YAML file, each pointing at the file, the line and the field.

An admin who mistypes a profile should see every mistake in one run, phrased as what was expected
and what was found, e.g.::

    profiles/default.yaml:14: profiles[2].milli_gpu: expected an integer between 1 and 999 (use gpus: 1
    for a whole GPU), got 1500

Lines come from :mod:`spawner.config.yaml_lines`, the one line-aware YAML loader; what a field
must hold comes from the ``x-expected`` phrase its JSON Schema carries, so the wording lives beside
the rule it explains.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import yaml_lines

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def render_path(path: Sequence[Any]) -> str:
    """``('nodes', 0, 'gpus', 1, 'memory_mib')`` -> ``'nodes[0].gpus[1].memory_mib'``."""
    text = ""
    for step in path:
        if isinstance(step, int):
            text += f"[{step}]"
        elif isinstance(step, str) and _IDENTIFIER.match(step):
            text += f".{step}" if text else step
        else:
            text += f"[{step!r}]"
    return text


class ConfigFileError(ValueError):
    """An admin's configuration cannot be used; ``errors`` lists every problem found, one per line.

    All problems are gathered before raising so that one start of the hub shows the admin the whole
    list, instead of one error per restart.
    """

    subject = "the configuration"

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        if len(self.errors) == 1:
            message = self.errors[0]
        else:
            lines = "\n".join(f"  {error}" for error in self.errors)
            message = f"{source}: {len(self.errors)} problems in {self.subject}:\n{lines}"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake: where it is (``line`` 0 when there is no line to point at) and what it is."""

    filename: str
    line: int
    path: tuple[Any, ...]
    text: str

    @property
    def where(self) -> str:
        return f"{self.filename}:{self.line}" if self.line else self.filename

    def __str__(self) -> str:
        field_path = render_path(self.path)
        return f"{self.where}: {field_path}: {self.text}" if field_path else f"{self.where}: {self.text}"

    def concerns(self, path: Sequence[Any]) -> bool:
        """Whether this problem lies at or inside ``path``, or encloses it (so ``path`` is suspect)."""
        shortest = min(len(self.path), len(path))
        return tuple(self.path[:shortest]) == tuple(path[:shortest])


def read_yaml(path: str | os.PathLike[str], filename: str) -> tuple[Any, list[Problem]]:
    """The document in ``path`` with its lines, or ``None`` and the problem that stopped reading it.

    ``filename`` is how messages name the file (the path as the admin gave it, not an absolute one).
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        return None, [Problem(filename, 0, (), f"cannot read the file ({reason})")]
    try:
        return yaml_lines.load(text), []
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        reason = getattr(error, "problem", None) or str(error)
        line = mark.line + 1 if mark is not None else 0
        return None, [Problem(filename, line, (), f"not valid YAML: {reason}")]


def problem_at(filename: str, document: Any, path: Sequence[Any], text: str) -> Problem:
    """A problem at ``path`` in ``document``, on the line where that path is written."""
    return Problem(filename, yaml_lines.line_of(document, path) or 0, tuple(path), text)


def duplicate_key_problems(filename: str, document: Any) -> Iterator[Problem]:
    """Keys written twice in one mapping: PyYAML would keep the last without a word."""
    for path, key, first, again in yaml_lines.duplicate_keys(document):
        text = f"given twice (first on line {first}); the second would silently win"
        yield Problem(filename, again, (*path, key), text)


def schema_problems(filename: str, document: Any, schema: Mapping[str, Any]) -> Iterator[Problem]:
    """Every way ``document`` breaks ``schema``, phrased with the schema's ``x-expected`` wording."""
    validator = jsonschema.Draft202012Validator(schema)
    for error in validator.iter_errors(document):
        yield from _translate(filename, document, error)


def _translate(filename: str, document: Any, error: jsonschema.ValidationError) -> Iterator[Problem]:
    path = tuple(error.absolute_path)
    expected = error.schema.get("x-expected") if isinstance(error.schema, Mapping) else None
    if "propertyNames" in error.absolute_schema_path:
        # jsonschema reports a bad key at its mapping; point at the key itself.
        text = f"expected {expected}, got {describe_value(error.instance)}"
        yield problem_at(filename, document, (*path, error.instance), text)
    elif error.validator == "required":
        properties = error.schema.get("properties", {})
        for key in error.validator_value:
            if key not in error.instance:
                key_expected = properties.get(key, {}).get("x-expected")
                detail = f"; expected {key_expected}" if key_expected else ""
                yield problem_at(filename, document, path, f"missing field {key!r}{detail}")
    elif error.validator == "additionalProperties" and error.validator_value is False:
        known = list(error.schema.get("properties", {}))
        for key in error.instance:
            if key not in known:
                text = f"unknown field{did_you_mean(key, known)}; expected one of: {', '.join(known)}"
                yield problem_at(filename, document, (*path, key), text)
    elif error.validator == "uniqueItems":
        items = error.instance
        repeat = next((index for index, item in enumerate(items) if item in items[:index]), 0)
        text = f"{describe_value(items[repeat])} is listed twice; expected {expected}"
        yield problem_at(filename, document, (*path, repeat), text)
    elif expected:
        hint = did_you_mean(error.instance, error.validator_value) if error.validator == "enum" else ""
        text = f"expected {expected}, got {describe_value(error.instance)}{hint}"
        yield problem_at(filename, document, path, text)
    else:
        yield problem_at(filename, document, path, error.message)


def did_you_mean(word: Any, choices: Sequence[Any]) -> str:
    """``" (did you mean 'milli_gpu'?)"`` when ``word`` is a near miss of one of ``choices``, else ``""``."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(choice) for choice in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe_value(value: Any) -> str:
    """How a found value is shown after "got": YAML's words rather than Python's."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return str(value)
