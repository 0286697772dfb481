"""The runner of ``%%submit`` cells: ``python -m spawner.service.runner <job files>/cell.json``.

The executor starts it as the job's owner, in the job's working directory, with stdout and stderr
going to the job's log. It refuses a payload whose signature is not the service's (the key is in
the job's environment, see :mod:`spawner.service.payload`) and a payload packed by another Python
(major.minor): pickled functions and classes only load in the Python that made them. Then it
rebuilds the cell's namespace (local modules, imports, values), runs the cell as ``__main__`` and
writes the results into the job's results directory:

- ``values.pickle``: a cloudpickle of ``{name: value}`` for the names the cell assigned (or the
  ``--out`` names), read back by the notebook only;
- ``summary.json``: the names returned, those that could not be and why, or the cell's exception
  with its traceback (only the user's frames), which the service serves as JSON.

The bundle the magic packs is defined below both of them, in :mod:`spawner.core.cell_bundle`, so
packing and unpacking cannot drift apart.
"""

from __future__ import annotations

import builtins
import json
import linecache
import os
import platform
import sys
import traceback
import types
from pathlib import Path
from typing import Any

from spawner.checkpoint import STOPPED_EXIT_CODE
from spawner.core.cell_bundle import FILE_MODE, CellBundle

from .payload import (
    KEY_VARIABLE,
    RESULTS_VARIABLE,
    SUMMARY_FILE,
    VALUES_FILE,
    SignatureError,
    read_signed_payload,
)

NOTICE_PREFIX = "[gpuslice] "
"""As the supervisor's notices: the lines the runner adds to the log, told apart from the cell's."""
EXIT_CELL_RAISED = 1
EXIT_BAD_PAYLOAD = 3
EXIT_PYTHON_MISMATCH = 4
MODULES_DIR = "modules"
"""Where the local modules that travelled with the cell are written, inside the job's files directory."""


class PythonMismatch(RuntimeError):
    """The cell was packed by another Python (major.minor) than the one running the job."""


def check_python(packed_by: str, running: str | None = None) -> None:
    """Refuse a cell packed by a Python whose pickles this one may not load, saying what to do."""
    running = running or platform.python_version()
    if packed_by.split(".")[:2] != running.split(".")[:2]:
        raise PythonMismatch(
            f"this cell was packed by Python {packed_by}, but the job runs Python {running}; pickled "
            "functions and classes only load in the same Python version (major.minor). Run the "
            f"notebook with a Python {'.'.join(running.split('.')[:2])} kernel, or ask an admin to set "
            f"JobService.python to a Python {'.'.join(packed_by.split('.')[:2])} interpreter"
        )


def notice(message: str) -> None:
    print(f"{NOTICE_PREFIX}{message}", file=sys.stderr, flush=True)


def install_modules(modules: dict[str, str], directory: Path) -> None:
    """Write the local modules that travelled and put them first on ``sys.path``."""
    if not modules:
        return
    for relative, source in modules.items():
        target = (directory / relative).resolve()
        if not target.is_relative_to(directory.resolve()):
            raise ValueError(f"module path {relative!r} leaves the modules directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, encoding="utf-8")
    sys.path.insert(0, str(directory))


def user_traceback(error: BaseException, filename: str) -> str:
    """The traceback from the cell's first frame on: the runner's own frames say nothing to the user."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


ARG_TEXT_LIMIT = 4000
"""The longest ``repr`` of one exception argument kept in the summary; a longer one is left out,
and the notebook then raises :class:`~spawner.magic.errors.RemoteJobError` rather than the class."""


def argument_texts(error: BaseException) -> list[str] | None:
    """The exception's arguments as ``repr`` text, for the notebook to read back with
    ``ast.literal_eval`` (text, never a pickle: nothing the job writes is unpickled outside it);
    None when one of them has no short ``repr``."""
    texts = []
    for argument in error.args:
        try:
            text = repr(argument)
        except Exception:  # a broken __repr__ of the user's: the class is raised as text instead
            return None
        if len(text) > ARG_TEXT_LIMIT:
            return None
        texts.append(text)
    return texts


def error_summary(error: BaseException, filename: str) -> dict[str, Any]:
    """The cell's exception as a structured record: its class by module and qualified name and
    its arguments as text, so that the notebook can raise the same class again where it can find
    it, and the traceback of the user's frames for every case."""
    kind = type(error)
    return {
        "type": kind.__name__,
        "module": kind.__module__,
        "qualname": kind.__qualname__,
        "args": argument_texts(error),
        "message": str(error),
        "traceback": user_traceback(error, filename),
    }


def run_bundle(bundle: CellBundle, results: Path, modules_dir: Path) -> int:
    """Run the cell as ``__main__`` and write its results; the job's exit status."""
    import cloudpickle

    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    if bundle.mode == FILE_MODE:
        main.__dict__["__file__"] = str(Path(bundle.filename).absolute())
        sys.argv = list(bundle.argv)
    sys.modules["__main__"] = main
    sys.path.insert(0, os.getcwd())
    # Tracebacks show the cell's lines: it has no file, so its source goes into linecache.
    lines = bundle.source.splitlines(keepends=True)
    linecache.cache[bundle.filename] = (len(bundle.source), None, lines, bundle.filename)
    try:
        install_modules(bundle.modules, modules_dir)
        for statement in bundle.imports:
            exec(compile(statement, "<imports of the cell>", "exec"), main.__dict__)
        main.__dict__.update(cloudpickle.loads(bundle.values) if bundle.values else {})
        code = compile(bundle.source, bundle.filename, "exec")
        exec(code, main.__dict__)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if code == STOPPED_EXIT_CODE:
            # Saved its checkpoint and ended on the stop signal (spawner.checkpoint): the job was
            # stopped (preempted, cancelled, timed out), which the service records; no error.
            write_summary(results, {"error": None, "values_available": False, "stopped": True})
            return code
        if code:
            write_summary(results, {"error": error_summary(stop, bundle.filename), "values_available": False})
            return code
    except BaseException as error:  # the cell's own exception goes back to the notebook
        traceback_text = user_traceback(error, bundle.filename)
        print(traceback_text, file=sys.stderr, end="", flush=True)
        write_summary(results, {"error": error_summary(error, bundle.filename), "values_available": False})
        return EXIT_CELL_RAISED
    write_values(results, main.__dict__, bundle)
    return 0


def write_values(results: Path, namespace: dict[str, Any], bundle: CellBundle) -> None:
    """Pickle each returned name (skipping those that cannot travel, saying why) and the summary."""
    import cloudpickle

    values: dict[str, Any] = {}
    not_returned: dict[str, str] = {}
    for name in bundle.returns:
        if name not in namespace:
            if bundle.out_given:
                not_returned[name] = "the cell did not assign it"
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            continue
        try:
            cloudpickle.dumps(value)
        except Exception as error:  # any pickling failure: leave the name out, say why
            not_returned[name] = f"{type(value).__name__} cannot be pickled ({error}); save it to a file"
            continue
        values[name] = value
    write_atomically(results / VALUES_FILE, cloudpickle.dumps(values))
    write_summary(
        results,
        {"values_available": True, "values": sorted(values), "not_returned": not_returned, "error": None},
    )


def write_summary(results: Path, summary: dict[str, Any]) -> None:
    summary = {"python": platform.python_version(), **summary}
    write_atomically(results / SUMMARY_FILE, json.dumps(summary).encode())


def write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_bytes(content)
    os.replace(partial, path)


def main(arguments: list[str] | None = None) -> int:
    """Verify, check, run; every refusal is one clear line in the log and a non-zero exit."""
    arguments = sys.argv[1:] if arguments is None else arguments
    if len(arguments) != 1:
        notice("usage: python -m spawner.service.runner <job files>/cell.json")
        return EXIT_BAD_PAYLOAD
    payload_path = Path(arguments[0])
    key_hex = os.environ.pop(KEY_VARIABLE, "")
    try:
        signed = read_signed_payload(payload_path)
        if not key_hex:
            raise SignatureError(f"{KEY_VARIABLE} is not set, so the payload cannot be verified")
        payload = signed.verify(bytes.fromhex(key_hex))
    except (OSError, ValueError) as error:
        notice(f"refusing to run: {error}")
        return EXIT_BAD_PAYLOAD
    try:
        check_python(signed.python)
    except PythonMismatch as error:
        notice(f"refusing to run: {error}")
        return EXIT_PYTHON_MISMATCH
    bundle = CellBundle.from_bytes(payload)
    results = Path(os.environ.get(RESULTS_VARIABLE) or payload_path.parent / "results")
    python = platform.python_version()
    notice(f"running the {bundle.mode} of job {signed.job_id} in {os.getcwd()} (Python {python})")
    return run_bundle(bundle, results, payload_path.parent / MODULES_DIR)


if __name__ == "__main__":
    sys.exit(main())
