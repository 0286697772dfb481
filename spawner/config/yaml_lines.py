"""A YAML loader that remembers the line of every mapping key and list item.

Validation errors are only useful to an admin if they point into the file ("gpus.yaml:12"); plain
PyYAML forgets positions once the document is built, so this loader keeps them on the containers
it builds. It also notices keys given twice, which PyYAML would otherwise silently resolve to the
last one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import yaml


class LineMapping(dict):
    """A dict that knows the line of the mapping (``line``) and of each of its keys."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.duplicates: list[tuple[Any, int, int]] = []
        """(key, first line, repeated line) for every key given more than once."""


class LineSequence(list):
    """A list that knows its own line (``line``) and the line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class LineLoader(yaml.SafeLoader):
    """SafeLoader building :class:`LineMapping` and :class:`LineSequence` (lines count from 1)."""


def _construct_mapping(loader: LineLoader, node: yaml.MappingNode):
    mapping = LineMapping(node.start_mark.line + 1)
    yield mapping
    # Keys merged in with "<<: *anchor" may be overridden on purpose; only keys written twice in
    # this very mapping are mistakes.
    written_here = {id(key_node) for key_node, _ in node.value}
    loader.flatten_mapping(node)
    explicit_keys = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=False)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key",
                key_node.start_mark,
            )
        line = key_node.start_mark.line + 1
        if id(key_node) in written_here:
            if key in explicit_keys:
                mapping.duplicates.append((key, mapping.key_lines[key], line))
            explicit_keys.add(key)
        mapping[key] = loader.construct_object(value_node, deep=False)
        mapping.key_lines[key] = line


def _construct_sequence(loader: LineLoader, node: yaml.SequenceNode):
    sequence = LineSequence(node.start_mark.line + 1)
    yield sequence
    for item_node in node.value:
        sequence.append(loader.construct_object(item_node, deep=False))
        sequence.item_lines.append(item_node.start_mark.line + 1)


LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def load(text: str) -> Any:
    """Parse one YAML document with line-recording containers; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=LineLoader)


def line_of(document: Any, path: Sequence[Any]) -> int | None:
    """The line where ``path`` (keys and indices, as jsonschema reports them) is written.

    Falls back to the nearest enclosing container that has a line, so a problem with a missing
    key points at the mapping that lacks it.
    """
    line = getattr(document, "line", None)
    current = document
    for step in path:
        if isinstance(current, LineMapping) and step in current.key_lines:
            line = current.key_lines[step]
            current = current[step]
        elif isinstance(current, LineSequence) and isinstance(step, int) and 0 <= step < len(current):
            line = current.item_lines[step]
            current = current[step]
        else:
            break
    return line


def duplicate_keys(document: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any, int, int]]:
    """(path of the mapping, key, first line, repeated line) for every key given twice, anywhere."""
    found = []
    if isinstance(document, LineMapping):
        found.extend((path, key, first, again) for key, first, again in document.duplicates)
        for key, value in document.items():
            found.extend(duplicate_keys(value, (*path, key)))
    elif isinstance(document, LineSequence):
        for index, value in enumerate(document):
            found.extend(duplicate_keys(value, (*path, index)))
    return found
