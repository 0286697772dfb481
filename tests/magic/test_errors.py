"""What a job that did not succeed raises in the notebook, from the record the runner writes.

The records are made by the runner's own :func:`~spawner.service.runner.error_summary` from real
exceptions, passed through JSON as the service serves them, and read back by
:func:`spawner.magic.errors.exception_for`; the kernel tests (test_kernel_e2e.py) do the same end to
end through a real hub.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from spawner.magic.errors import (
    JobCancelled,
    JobPreempted,
    RemoteJobError,
    exception_for,
    remote_exception,
)
from spawner.service.runner import ARG_TEXT_LIMIT, error_summary


def record_of(error: BaseException) -> dict:
    """The runner's record of ``error`` raised in a cell, after a trip through JSON."""
    try:
        raise error
    except BaseException as raised:
        return json.loads(json.dumps(error_summary(raised, "<cell>")))


def failed(error: dict | None, **fields) -> dict:
    return {
        "state": "failed",
        "reason": "the script exited with code 1",
        "exit_code": 1,
        "error": error,
        **fields,
    }


def test_a_builtin_exception_is_raised_again_as_itself_with_the_remote_traceback_as_its_cause():
    raised = exception_for("job-1", "failed", failed(record_of(ValueError("learning rate 3.0 is too high"))))
    assert type(raised) is ValueError and raised.args == ("learning rate 3.0 is too high",)
    cause = raised.__cause__
    assert isinstance(cause, RemoteJobError) and cause.job_id == "job-1" and cause.exit_code == 1
    assert "job job-1 raised ValueError: learning rate 3.0 is too high" in str(cause)
    assert "Remote traceback (the job's own frames):" in str(cause) and "ValueError" in cause.remote_traceback
    assert any("job-1" in note for note in getattr(raised, "__notes__", ["job-1"]))


@pytest.mark.parametrize(
    "error",
    [KeyError("epoch"), OSError(2, "No such file or directory"), ZeroDivisionError("division by zero")],
)
def test_arguments_of_several_shapes_come_back_equal(error):
    raised = exception_for("job-2", "failed", failed(record_of(error)))
    assert type(raised) is type(error) and raised.args == error.args and str(raised) == str(error)


def test_a_class_this_kernel_has_not_loaded_is_a_remote_job_error_with_its_name_and_traceback():
    record = record_of(ValueError("x"))
    record.update(module="a_module_no_one_has", qualname="DivergedError", type="DivergedError")
    raised = exception_for("job-3", "failed", failed(record))
    assert type(raised) is RemoteJobError
    assert (raised.job_id, raised.exit_code, raised.error_type) == ("job-3", 1, "DivergedError")
    assert str(raised).startswith("job job-3 raised DivergedError: x\nRemote traceback")
    assert raised.remote_traceback == record["traceback"]


def test_a_module_is_never_imported_because_a_job_names_it():
    record = record_of(ValueError("x"))
    record.update(module="antigravity", qualname="ValueError")
    assert "antigravity" not in sys.modules
    assert type(exception_for("job-4", "failed", failed(record))) is RemoteJobError
    assert "antigravity" not in sys.modules


def test_a_loaded_class_of_the_notebook_is_found_by_its_qualified_name(monkeypatch):
    class Diverged(Exception):
        pass

    notebook = types.ModuleType("notebook_main_for_test")
    notebook.Outer = types.SimpleNamespace(Diverged=Diverged)
    monkeypatch.setitem(sys.modules, "notebook_main_for_test", notebook)
    record = record_of(Diverged("loss is nan at step", 12))
    record.update(module="notebook_main_for_test", qualname="Outer.Diverged")
    raised = exception_for("job-5", "failed", failed(record))
    assert type(raised) is Diverged and raised.args == ("loss is nan at step", 12)


def test_what_cannot_be_raised_again_faithfully_is_a_remote_job_error():
    class NeedsTwo(Exception):
        def __init__(self, first, second):
            super().__init__(f"{first}/{second}")

    not_literal = record_of(ValueError(object()))
    assert exception_for("j", "failed", failed(not_literal)).__class__ is RemoteJobError
    too_long = record_of(ValueError("x" * (ARG_TEXT_LIMIT + 1)))
    assert too_long["args"] is None and type(exception_for("j", "failed", failed(too_long))) is RemoteJobError
    wrong_arguments = record_of(NeedsTwo("a", "b"))
    wrong_arguments.update(module=__name__, qualname="ValueError")  # a loaded module without it
    assert type(exception_for("j", "failed", failed(wrong_arguments))) is RemoteJobError
    system_exit = record_of(SystemExit(2))
    assert remote_exception("j", system_exit) is None  # never raise SystemExit in a notebook


def test_a_script_that_failed_without_a_record_says_why_and_where_to_look():
    raised = exception_for("job-6", "failed", failed(None, reason="time limit reached (10m)", exit_code=-15))
    assert type(raised) is RemoteJobError and raised.remote_traceback == ""
    assert str(raised) == (
        "job job-6 failed: time limit reached (10m) (exit code -15); see its log with %job logs job-6"
    )


def test_cancelled_and_preempted_then_given_up_jobs_raise_their_own_errors():
    cancelled = exception_for("job-7", "cancelled", {"reason": "cancelled by ada", "exit_code": None})
    assert type(cancelled) is JobCancelled and str(cancelled) == "job job-7 was cancelled: cancelled by ada"
    assert not isinstance(cancelled, RemoteJobError)
    lost = exception_for("job-8", "failed", failed(None, reason="lost"), previous_state="preempted")
    assert type(lost) is JobPreempted and "was preempted and did not run again: lost" in str(lost)


def test_a_job_that_succeeded_or_has_not_ended_raises_nothing():
    assert exception_for("j", "succeeded", {"reason": "", "exit_code": 0}) is None
    assert exception_for("j", "running", {}) is None
