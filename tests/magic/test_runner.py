"""The runner of cells, as the executor starts it: signature, Python version, namespace, results."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import cloudpickle
import numpy
import pytest

from spawner.magic.capture import capture, cell_names, imported_top_names, pack
from spawner.service import payload as signing
from spawner.service.runner import (
    EXIT_BAD_PAYLOAD,
    EXIT_CELL_RAISED,
    EXIT_PYTHON_MISMATCH,
    PythonMismatch,
    check_python,
)

PYTHON = ".".join(map(str, sys.version_info[:3]))
MASTER = b"m" * 32


def notebook(source: str) -> dict:
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<notebook>", "exec"), namespace)
    return namespace


def packed(cell: str, namespace: dict, workdir: Path, out: list[str] | None = None) -> bytes:
    names = cell_names(cell)
    taken = capture(
        names.free, namespace, workdir=workdir, code_imports=imported_top_names(cell), loaded_modules={}
    )
    returns = out if out is not None else names.assigned
    return pack(
        taken, source=cell, filename="<cell>", mode="cell", returns=returns, out_given=out is not None
    )


def run_job(files: Path, workdir: Path, job_id: str = "job-test", key: bytes | None = None):
    """``python -m spawner.service.runner`` as the executor starts it; (exit code, output)."""
    key = signing.job_key(MASTER, job_id) if key is None else key
    env = {
        **os.environ,
        signing.KEY_VARIABLE: key.hex(),
        signing.RESULTS_VARIABLE: str(files / "results"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "spawner.service.runner", str(files / signing.PAYLOAD_FILE)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def results(files: Path) -> tuple[dict, dict | None]:
    summary = json.loads((files / "results" / signing.SUMMARY_FILE).read_text())
    values_file = files / "results" / signing.VALUES_FILE
    return summary, cloudpickle.loads(values_file.read_bytes()) if values_file.exists() else None


@pytest.fixture
def dirs(tmp_path):
    files, workdir = tmp_path / "files", tmp_path / "work"
    files.mkdir()
    workdir.mkdir()
    return files, workdir


def test_the_master_key_is_made_once_private_and_job_keys_differ(tmp_path):
    key = signing.load_or_create_master_key(tmp_path)
    path = tmp_path / signing.MASTER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.load_or_create_master_key(tmp_path) == key
    assert signing.job_key(key, "job-a") != signing.job_key(key, "job-b")
    assert len(signing.job_key(key, "job-a")) == 32


def test_a_cell_runs_as_main_in_its_workdir_with_its_function_array_and_local_module(dirs):
    files, workdir = dirs
    (workdir / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    namespace = notebook("def scale(v):\n    return v * 2\n")
    namespace["data"] = numpy.arange(4)
    sys.path.insert(0, str(workdir))
    try:
        import helpers

        namespace["helpers"] = helpers
        cell = (
            "import os\n"
            "scaled = scale(data) + helpers.triple(1)\n"
            "where = os.getcwd()\n"
            "module = __name__\n"
            "print('scaled', scaled.tolist())\n"
            "class Result:\n    pass\n"
        )
        names = cell_names(cell)
        taken = capture(
            names.free, namespace, workdir=workdir, code_imports=[], loaded_modules={"helpers": helpers}
        )
    finally:
        sys.path.remove(str(workdir))
        del sys.modules["helpers"]
    payload = pack(
        taken, source=cell, filename="<cell>", mode="cell", returns=names.assigned, out_given=False
    )
    (workdir / "helpers.py").write_text("raise ImportError('the shipped copy must be used')\n")
    signing.write_signed_payload(files, signing.job_key(MASTER, "job-test"), "job-test", PYTHON, payload)
    code, output = run_job(files, workdir)
    assert code == 0, output
    assert "scaled [3, 5, 7, 9]" in output
    summary, values = results(files)
    assert summary["values_available"] and summary["error"] is None
    assert summary["values"] == ["Result", "module", "scaled", "where"]  # not the module os
    assert values["scaled"].tolist() == [3, 5, 7, 9]
    assert values["where"] == str(workdir)
    assert values["module"] == "__main__"
    assert values["Result"].__name__ == "Result"


def test_out_names_choose_what_comes_back_and_unpicklable_ones_are_left_out_with_why(dirs):
    files, workdir = dirs
    cell = "import threading\na = 1\nb = 2\nlock = threading.Lock()\n"
    payload = packed(cell, {}, workdir, out=["b", "lock", "missing"])
    signing.write_signed_payload(files, signing.job_key(MASTER, "job-test"), "job-test", PYTHON, payload)
    code, output = run_job(files, workdir)
    assert code == 0, output
    summary, values = results(files)
    assert values == {"b": 2}
    assert "cannot be pickled" in summary["not_returned"]["lock"]
    assert summary["not_returned"]["missing"] == "the cell did not assign it"


def test_an_exception_comes_back_with_the_cells_own_traceback(dirs):
    files, workdir = dirs
    cell = "def inner(x):\n    return x / 0\n\nvalue = inner(1)\n"
    signing.write_signed_payload(
        files, signing.job_key(MASTER, "job-test"), "job-test", PYTHON, packed(cell, {}, workdir)
    )
    code, output = run_job(files, workdir)
    assert code == EXIT_CELL_RAISED
    summary, values = results(files)
    assert values is None and summary["values_available"] is False
    error = summary["error"]
    assert (error["type"], error["message"]) == ("ZeroDivisionError", "division by zero")
    assert 'File "<cell>", line 4, in <module>' in error["traceback"]
    assert "    return x / 0" in error["traceback"]
    assert "runner.py" not in error["traceback"]
    assert error["traceback"] in output  # and the log shows it too


def test_a_tampered_payload_is_refused_before_anything_runs(dirs):
    files, workdir = dirs
    cell = "open('ran', 'w').write('yes')\n"
    path = signing.write_signed_payload(
        files, signing.job_key(MASTER, "job-test"), "job-test", PYTHON, packed(cell, {}, workdir)
    )
    document = json.loads(path.read_text())
    other = packed("open('ran', 'w').write('tampered')\n", {}, workdir)
    document["payload"] = signing.SignedPayload("job-test", PYTHON, other, "").to_json()["payload"]
    path.write_text(json.dumps(document))
    code, output = run_job(files, workdir)
    assert code == EXIT_BAD_PAYLOAD
    assert "refusing to run: the payload of job job-test does not carry the service's signature" in output
    assert not (workdir / "ran").exists()


def test_the_key_of_another_job_does_not_verify(dirs):
    files, workdir = dirs
    signing.write_signed_payload(
        files, signing.job_key(MASTER, "job-test"), "job-test", PYTHON, packed("x = 1\n", {}, workdir)
    )
    code, output = run_job(files, workdir, key=signing.job_key(MASTER, "job-other"))
    assert code == EXIT_BAD_PAYLOAD and "does not carry the service's signature" in output


def test_a_payload_of_another_python_is_refused_saying_what_to_do(dirs):
    files, workdir = dirs
    signing.write_signed_payload(
        files, signing.job_key(MASTER, "job-test"), "job-test", "3.99.1", packed("x = 1\n", {}, workdir)
    )
    code, output = run_job(files, workdir)
    assert code == EXIT_PYTHON_MISMATCH
    assert f"this cell was packed by Python 3.99.1, but the job runs Python {PYTHON}" in output
    assert "Run the notebook with a Python" in output and "JobService.python" in output
    assert not (files / "results" / signing.SUMMARY_FILE).exists()


def test_versions_differing_only_in_the_patch_level_match():
    check_python("3.11.2", "3.11.9")
    with pytest.raises(PythonMismatch):
        check_python("3.10.12", "3.11.9")


def test_a_script_runs_with_its_arguments_as_main(dirs):
    files, workdir = dirs
    source = (
        "import sys\n"
        "print('args', sys.argv[1:], __name__, __file__.endswith('train.py'))\n"
        "epochs = int(sys.argv[1])\n"
    )
    taken = capture([], {}, workdir=workdir, loaded_modules={})
    payload = pack(
        taken,
        source=source,
        filename="train.py",
        mode="file",
        returns=["epochs"],
        out_given=True,
        argv=["train.py", "3", "--fast"],
    )
    signing.write_signed_payload(files, signing.job_key(MASTER, "job-test"), "job-test", PYTHON, payload)
    code, output = run_job(files, workdir)
    assert code == 0, output
    assert "args ['3', '--fast'] __main__ True" in output
    assert results(files)[1] == {"epochs": 3}
