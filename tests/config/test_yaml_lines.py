"""The line-recording YAML loader that lets inventory errors point into the file."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from spawner.config import yaml_lines

DOCUMENT = textwrap.dedent("""\
    nodes:
      - name: a
        gpus:
          - model: T4

          - model: L4
            memory_mib: 1
    """)


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ((), 1),
        (("nodes",), 1),
        (("nodes", 0), 2),
        (("nodes", 0, "gpus"), 3),
        (("nodes", 0, "gpus", 1), 6),
        (("nodes", 0, "gpus", 1, "memory_mib"), 7),
        (("nodes", 0, "gpus", 1, "absent"), 6),
        (("nodes", 5, "name"), 1),
    ],
)
def test_line_of_points_at_the_key_or_item_or_else_its_container(path, line):
    assert yaml_lines.line_of(yaml_lines.load(DOCUMENT), path) == line


def test_loaded_values_are_still_plain_dicts_and_lists():
    document = yaml_lines.load(DOCUMENT)

    assert document == {"nodes": [{"name": "a", "gpus": [{"model": "T4"}, {"model": "L4", "memory_mib": 1}]}]}
    assert isinstance(document, dict)
    assert isinstance(document["nodes"], list)


def test_keys_written_twice_are_found_anywhere_with_both_lines():
    document = yaml_lines.load("a: 1\nb:\n  - {x: 1, y: 2, x: 3}\na: 4\n")

    assert sorted(yaml_lines.duplicate_keys(document)) == [((), "a", 1, 4), (("b", 0), "x", 3, 3)]
    assert document["a"] == 4


def test_overriding_a_merged_key_is_not_a_duplicate():
    document = yaml_lines.load("base: &base {x: 1, y: 2}\nchild: {<<: *base, x: 3}\n")

    assert yaml_lines.duplicate_keys(document) == []
    assert document["child"] == {"x": 3, "y": 2}


def test_unsafe_tags_are_refused_as_with_safe_load():
    with pytest.raises(yaml.YAMLError):
        yaml_lines.load("!!python/object/apply:os.system ['true']")
