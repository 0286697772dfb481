"""What a cell takes with it: free names, imports, code by value, local modules, and refusals."""

from __future__ import annotations

import pickle
import sys
import threading
import types
from pathlib import Path

import cloudpickle
import numpy
import pytest

from spawner.core.cell_bundle import CellBundle
from spawner.magic.capture import CaptureRefused, capture, cell_names, imported_top_names, pack


def notebook(source: str) -> dict:
    """A namespace as a notebook's: what ``source`` defines lives in ``__main__``."""
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<notebook>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(
    ("source", "free", "assigned"),
    [
        ("y = x + 1", ["x"], ["y"]),
        ("x = 1\ny = x + 1", [], ["x", "y"]),
        ("x = x + 1", ["x"], ["x"]),
        ("x += 1", ["x"], ["x"]),
        ("total = sum(v * k for v in values)", ["sum", "values", "k"], ["total"]),
        ("squares = [v * v for v in data]", ["data"], ["squares"]),
        ("def f(a):\n    return a * scale + helper(a)\nr = f(2)", ["scale", "helper"], ["f", "r"]),
        ("def f():\n    return later\nlater = 1", [], ["f", "later"]),
        ("import numpy as np\nz = np.zeros(3)", [], ["np", "z"]),
        ("class Model(Base):\n    size = width\nm = Model()", ["Base", "width"], ["Model", "m"]),
        ("for i in range(n):\n    acc = i", ["range", "n"], ["i", "acc"]),
        ("try:\n    pass\nexcept Error as problem:\n    seen = problem", ["Error"], ["problem", "seen"]),
        ("f = lambda a, b=default: a + b + other", ["default", "other"], ["f"]),
    ],
)
def test_free_and_assigned_names_follow_the_order_of_the_cell(source, free, assigned):
    names = cell_names(source)
    assert names.free == free
    assert names.assigned == assigned


def test_modules_become_import_lines_and_builtins_stay_behind():
    namespace = notebook("import numpy as np\nimport os.path\nimport json")
    taken = capture(
        ["np", "os", "json", "len", "print"], namespace, workdir=Path("/nonexistent"), loaded_modules={}
    )
    assert taken.imports == ["import numpy as np", "import os", "import json"]
    assert taken.pickled == {}


def test_notebook_functions_and_classes_travel_by_value_with_what_they_use(tmp_path):
    namespace = notebook(
        "factor = 3\n"
        "def scale(v):\n    return v * factor\n"
        "class Point:\n    def __init__(self, x):\n        self.x = x\n"
    )
    taken = capture(["scale", "Point"], namespace, workdir=tmp_path, loaded_modules={})
    assert set(taken.functions) == {"scale", "Point"}
    restored = cloudpickle.loads(cloudpickle.dumps(taken.pickled))
    assert restored["scale"](2) == 6  # factor travelled inside the function
    assert restored["Point"](5).x == 5
    assert "by value scale" in taken.manifest(1234) and "payload 1.2 KiB" in taken.manifest(1234)


def test_small_values_travel_with_type_and_size_in_the_manifest(tmp_path):
    namespace = {"data": numpy.arange(10), "label": "run 1"}
    taken = capture(["data", "label"], namespace, workdir=tmp_path, loaded_modules={})
    assert taken.values["data"][0] == "numpy.ndarray"
    assert taken.values["label"][0] == "str"
    assert "values data (numpy.ndarray, " in taken.manifest(100)


def test_local_modules_travel_as_source_by_their_import_name(tmp_path, monkeypatch):
    (tmp_path / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("VERSION = 2\n")
    (package / "core.py").write_text("def one():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import helpers  # noqa: F401 - loaded as a notebook would have it

    try:
        loaded = {"helpers": sys.modules["helpers"], "numpy": numpy, "json": sys.modules["json"]}
        source = "import mypkg.core\nr = helpers.triple(2)"
        taken = capture(
            ["helpers"],
            {"helpers": sys.modules["helpers"]},
            workdir=tmp_path.resolve(),
            code_imports=imported_top_names(source),
            loaded_modules=loaded,
        )
    finally:
        del sys.modules["helpers"]
    assert taken.imports == ["import helpers"]
    assert taken.modules == {
        "helpers.py": "def triple(x):\n    return 3 * x\n",
        "mypkg/__init__.py": "VERSION = 2\n",
        "mypkg/core.py": "def one():\n    return 1\n",
    }
    assert "local modules helpers.py (32 bytes), mypkg/__init__.py" in taken.manifest(10)


def test_a_value_over_the_limit_is_refused_with_its_name_type_size_and_a_hint(tmp_path):
    namespace = {"big": numpy.zeros(1_000_000), "small": 1}
    with pytest.raises(CaptureRefused) as refused:
        capture(["small", "big"], namespace, workdir=tmp_path, loaded_modules={}, max_value_bytes=1024 * 1024)
    message = str(refused.value)
    assert message.startswith("%%submit: nothing was sent, because big (numpy.ndarray, 7.6 MiB)")
    assert "over the 1 MiB limit for one value" in message
    assert "Save it to a file" in message and "create it inside the cell" in message


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        (lambda path: threading.Lock(), "_thread.lock"),
        (lambda path: open(path / "out.txt", "w"), "_io.TextIOWrapper"),  # a file open for writing
    ],
)
def test_an_unpicklable_value_is_refused_with_its_name_type_and_a_hint(tmp_path, make, type_name):
    value = make(tmp_path)
    try:
        with pytest.raises(CaptureRefused) as refused:
            capture(["handle"], {"handle": value}, workdir=tmp_path, loaded_modules={})
    finally:
        getattr(value, "close", lambda: None)()
    message = str(refused.value)
    assert f"handle ({type_name}, " in message and "cannot be pickled" in message
    assert "Create it inside the cell" in message


def test_every_refused_value_is_named_at_once(tmp_path):
    namespace = {"lock": threading.Lock(), "big": bytes(3 * 1024 * 1024)}
    with pytest.raises(CaptureRefused) as refused:
        capture(
            ["lock", "big"], namespace, workdir=tmp_path, loaded_modules={}, max_value_bytes=2 * 1024 * 1024
        )
    lines = str(refused.value).splitlines()
    assert lines[0].endswith("these values cannot travel with the cell:")
    assert lines[1].strip().startswith("lock (_thread.lock")
    assert lines[2].strip().startswith("big (bytes, 3 MiB)")


def test_the_bundle_is_plain_data_around_a_pickle_of_the_values(tmp_path):
    taken = capture(["x"], {"x": 41}, workdir=tmp_path, loaded_modules={})
    payload = pack(taken, source="y = x + 1", filename="<cell>", mode="cell", returns=["y"], out_given=False)
    fields = pickle.loads(payload)  # no class of ours needed to read the outer layer
    assert isinstance(fields, dict) and fields["returns"] == ["y"]
    bundle = CellBundle.from_bytes(payload)
    assert cloudpickle.loads(bundle.values) == {"x": 41}
    assert bundle.python == ".".join(map(str, sys.version_info[:3]))


def test_modules_of_installed_packages_are_not_local(tmp_path):
    fake = types.ModuleType("installed")
    fake.__file__ = str(Path(numpy.__file__))
    taken = capture([], {}, workdir=Path(numpy.__file__).parents[1], loaded_modules={"installed": fake})
    assert taken.modules == {}
