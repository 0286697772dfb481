"""Every file operation of the service in a job's folders, each with a link planted where its file goes.

With ``LocalExecutor.run_as_owner`` the job's files directory is its owner's, so the owner can put
a symbolic link (or a hard link, a FIFO, a directory) wherever the service reads or writes. These
tests plant one at every such place and check that the service, running as root, neither reads
through it nor writes through it (see :mod:`spawner.service.job_files`). Where a test needs the
link to come from an unprivileged account, it plants it as ``nobody``; those tests skip where
there is no such account or no interpreter it can run.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from spawner.service import job_files
from spawner.service import payload as signing
from spawner.service.executor import ExecutionRefused, ExecutionSpec, LocalExecutor, jobdir
from spawner.service.executor.supervisor import JobSupervisor
from spawner.service.job_files import UntrustedFile
from spawner.service.job_logs import log_size_and_last_byte as _log_size_and_last_byte
from spawner.service.job_request import CellPayload
from spawner.service.jobs import JobService
from spawner.service.run_files import fresh_job_files as _fresh_job_files
from spawner.service.run_files import write_cell as _write_cell
from spawner.service.run_files import write_script as _write_script

pytestmark = pytest.mark.timeout(60)

UNPRIVILEGED = "nobody"
SYSTEM_PYTHON = "/usr/bin/python3"
"""An interpreter any account can run (this checkout's own may live in a private home)."""
SECRET = b"root-only secret 7f3a\n"
ORIGINAL = b"root's file, unchanged\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting files of other accounts needs root")


def unprivileged_account() -> pwd.struct_passwd:
    """The account the attacks run as; skips the test where there is none to run as."""
    if os.geteuid() != 0:
        pytest.skip("running as another account needs root")
    try:
        account = pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        pytest.skip(f"no unprivileged account {UNPRIVILEGED!r} on this host")
    try:
        subprocess.run([SYSTEM_PYTHON, "-c", "pass"], user=UNPRIVILEGED, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"{UNPRIVILEGED} cannot run {SYSTEM_PYTHON}: {error}")
    return account


def as_unprivileged(code: str) -> None:
    """Run ``code`` as the unprivileged account, as its notebook server or its job could."""
    subprocess.run(
        [SYSTEM_PYTHON, "-c", textwrap.dedent(code)],
        user=UNPRIVILEGED,
        group=pwd.getpwnam(UNPRIVILEGED).pw_gid,
        extra_groups=[],
        check=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )


def world_traversable_dir(prefix: str) -> Path:
    """A fresh directory under /tmp that other accounts may pass through (pytest's are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    directory.chmod(0o711)
    return directory


@pytest.fixture
def secrets_dir(tmp_path):
    """Root's files the owner must never read or change: in a directory only root can enter."""
    directory = tmp_path / "root-only"
    directory.mkdir(mode=0o700)
    (directory / "secret").write_bytes(SECRET)
    (directory / "secret").chmod(0o600)
    (directory / "victim").write_bytes(ORIGINAL)
    (directory / "victim-dir").mkdir()
    (directory / "victim-dir" / "keep").write_bytes(ORIGINAL)
    return directory


@pytest.fixture
def files(tmp_path):
    """A job's files directory with the results of a run, as the runner leaves them."""
    directory = tmp_path / "job-scripts" / "job-1"
    (directory / "results").mkdir(parents=True)
    (directory / "results" / "values.pickle").write_bytes(b"the values")
    return directory


MINE = frozenset({os.geteuid()})


# --------------------------------------------------------------------------------- reading


def test_a_regular_file_of_the_job_reads_back(files):
    assert job_files.read_file(files, ("results", "values.pickle"), owners=MINE, directory_owners=MINE) == (
        b"the values"
    )


def test_a_missing_file_or_folder_is_not_found(files, tmp_path):
    with pytest.raises(FileNotFoundError):
        job_files.read_file(files, ("results", "summary.json"), owners=MINE, directory_owners=MINE)
    with pytest.raises(FileNotFoundError):
        job_files.read_file(tmp_path / "none", ("results", "x"), owners=MINE, directory_owners=MINE)


def test_a_link_at_the_results_file_is_not_followed(files, secrets_dir):
    values = files / "results" / "values.pickle"
    values.unlink()
    values.symlink_to(secrets_dir / "secret")
    with pytest.raises(UntrustedFile, match="values.pickle is a symbolic link"):
        job_files.read_file(files, ("results", "values.pickle"), owners=MINE, directory_owners=MINE)


def test_a_link_at_the_results_directory_is_not_followed(files, secrets_dir):
    shutil.rmtree(files / "results")
    (secrets_dir / "values.pickle").write_bytes(SECRET)
    (files / "results").symlink_to(secrets_dir)
    with pytest.raises(UntrustedFile, match="results is a symbolic link"):
        job_files.read_file(files, ("results", "values.pickle"), owners=MINE, directory_owners=MINE)


def test_a_file_where_the_results_directory_goes_is_refused(files):
    shutil.rmtree(files / "results")
    (files / "results").write_bytes(b"")
    with pytest.raises(UntrustedFile, match="results is a regular file, not a directory"):
        job_files.read_file(files, ("results", "values.pickle"), owners=MINE, directory_owners=MINE)


def test_a_fifo_at_the_results_file_is_refused_without_waiting_for_a_writer(files):
    values = files / "results" / "values.pickle"
    values.unlink()
    os.mkfifo(values)
    with pytest.raises(UntrustedFile, match="values.pickle is a FIFO, not a regular file"):
        job_files.read_file(files, ("results", "values.pickle"), owners=MINE, directory_owners=MINE)


def test_a_directory_at_the_results_file_is_refused(files):
    values = files / "results" / "values.pickle"
    values.unlink()
    values.mkdir()
    with pytest.raises(UntrustedFile, match="is a directory, not a regular file"):
        job_files.read_file(files, ("results", "values.pickle"), owners=MINE, directory_owners=MINE)


@needs_root
def test_a_hard_link_to_another_accounts_file_is_refused_by_its_owner(files, secrets_dir):
    """fs.protected_hardlinks stops most hosts' users linking root's files; the owner check stops
    it everywhere: only files of the account the job runs as come back."""
    job_uid = 12345
    values = files / "results" / "values.pickle"
    values.unlink()
    os.link(secrets_dir / "secret", values)
    with pytest.raises(UntrustedFile, match="belongs to uid 0, not to the account the job runs as"):
        job_files.read_file(
            files, ("results", "values.pickle"), owners={job_uid}, directory_owners={0, job_uid}
        )


@needs_root
def test_a_results_directory_of_another_account_is_refused(files):
    os.chown(files / "results", 12345, 12345)
    with pytest.raises(UntrustedFile, match="belongs to uid 12345"):
        job_files.read_file(files, ("results", "values.pickle"), owners=MINE, directory_owners=MINE)


# --------------------------------------------------------------------------------- writing


def test_a_new_file_replaces_a_link_and_leaves_its_target_alone(tmp_path, secrets_dir):
    (tmp_path / "script.py").symlink_to(secrets_dir / "victim")
    with job_files.opened_directory(tmp_path) as fd:
        job_files.replace_file(fd, "script.py", b"print('mine')\n")
    assert (secrets_dir / "victim").read_bytes() == ORIGINAL
    script = tmp_path / "script.py"
    assert not script.is_symlink() and script.read_bytes() == b"print('mine')\n"
    info = script.lstat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root-only", "script.py"]  # no temporary left


def test_a_directory_where_the_file_goes_is_not_replaced_and_nothing_is_left_behind(tmp_path):
    (tmp_path / "script.py").mkdir()
    with job_files.opened_directory(tmp_path) as fd, pytest.raises(IsADirectoryError):
        job_files.replace_file(fd, "script.py", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["script.py"]


def test_a_directory_is_opened_only_if_it_is_one_and_not_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UntrustedFile, match="link is a symbolic link"):
        job_files.open_directory(tmp_path / "link")
    with pytest.raises(UntrustedFile, match="file is a regular file, not a directory"):
        job_files.open_directory(tmp_path / "file")
    with pytest.raises(UntrustedFile, match=f"belongs to uid {os.geteuid()}"):
        job_files.open_directory(tmp_path / "real", owners={os.geteuid() + 1})
    os.close(job_files.open_directory(tmp_path / "real", owners=MINE))


# -------------------------------------------------------------------------------- removing


def test_removing_a_link_removes_the_link_not_its_target(tmp_path, secrets_dir):
    (tmp_path / "results").symlink_to(secrets_dir / "victim-dir")
    (tmp_path / "file-link").symlink_to(secrets_dir / "victim")
    with job_files.opened_directory(tmp_path) as fd:
        job_files.remove(fd, "results")
        job_files.remove(fd, "file-link")
        job_files.remove(fd, "never-there")
    assert not (tmp_path / "results").is_symlink() and not (tmp_path / "file-link").is_symlink()
    assert (secrets_dir / "victim-dir" / "keep").read_bytes() == ORIGINAL
    assert (secrets_dir / "victim").read_bytes() == ORIGINAL


def test_removing_a_tree_never_follows_the_links_or_opens_the_fifos_in_it(tmp_path, secrets_dir):
    results = tmp_path / "results"
    deep = results / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "data").write_bytes(b"x")
    (results / "a" / "to-dir").symlink_to(secrets_dir / "victim-dir")
    (deep / "to-file").symlink_to(secrets_dir / "victim")
    os.mkfifo(results / "a" / "fifo")
    (results / "a" / "dangling").symlink_to(tmp_path / "nowhere")
    done = threading.Event()

    def remove():
        with job_files.opened_directory(tmp_path) as fd:
            job_files.remove(fd, "results")
        done.set()

    worker = threading.Thread(target=remove, daemon=True)
    worker.start()
    assert done.wait(10), "removing the tree blocked (a FIFO opened?)"
    assert not results.exists()
    assert (secrets_dir / "victim-dir" / "keep").read_bytes() == ORIGINAL
    assert (secrets_dir / "victim").read_bytes() == ORIGINAL


def test_removing_a_deep_tree_needs_no_recursion(tmp_path):
    (tmp_path / "results").mkdir()
    fd = os.open(tmp_path / "results", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1200):  # deeper than Python's recursion limit
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    with job_files.opened_directory(tmp_path) as fd:
        job_files.remove(fd, "results")
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------ giving to owners


def _has_unprivileged() -> bool:
    try:
        pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        return False
    return True


@needs_root
def test_giving_a_tree_away_gives_only_what_the_service_wrote(tmp_path, secrets_dir):
    uid, gid = 12345, 23456
    files = tmp_path / "job-1"
    (files / "results").mkdir(parents=True)
    (files / "cell.json").write_bytes(b"{}")
    (files / "to-file").symlink_to(secrets_dir / "victim")
    (files / "to-dir").symlink_to(secrets_dir / "victim-dir")
    os.link(secrets_dir / "victim", files / "hard-link")
    owners_own = files / "modules"
    (owners_own / "inner").mkdir(parents=True)
    (owners_own / "inner" / "service-made").write_bytes(b"")
    os.chown(owners_own, uid, gid)
    job_files.give_tree(files, uid, gid)

    def owner(path: Path) -> tuple[int, int]:
        info = path.lstat()
        return info.st_uid, info.st_gid

    for given in (files, files / "results", files / "cell.json"):
        assert owner(given) == (uid, gid), given
    for kept in (
        files / "to-file",
        files / "to-dir",
        secrets_dir / "victim",
        secrets_dir / "victim-dir",
        secrets_dir / "victim-dir" / "keep",
        owners_own / "inner",  # in a directory that was already the owner's: not walked
    ):
        assert owner(kept)[0] == 0, kept
    assert (files / "hard-link").lstat().st_nlink == 2 and owner(files / "hard-link")[0] == 0


@needs_root
def test_on_a_rerun_only_the_services_new_directories_change_hands(tmp_path, secrets_dir):
    """The files directory is the owner's by then: a file of root's in it may be one the owner
    moved in from its home, so only directories of root's (which nobody can move in) are given."""
    uid, gid = 12345, 23456
    files = tmp_path / "job-1"
    files.mkdir(mode=0o700)
    os.chown(files, uid, gid)
    (files / "moved-in").write_bytes(b"root's, from the owner's home")
    (files / "results" / "inner").mkdir(parents=True, mode=0o700)
    (files / "results" / "inner" / "written").write_bytes(b"")
    (files / "script.py").write_bytes(b"print('hi')")
    job_files.give_tree(files, uid, gid)
    for given in (files / "results", files / "results" / "inner", files / "results" / "inner" / "written"):
        assert given.lstat().st_uid == uid, given
    assert (files / "moved-in").lstat().st_uid == 0
    assert (files / "script.py").lstat().st_uid == 0


@needs_root
def test_giving_away_a_link_instead_of_a_directory_is_refused(tmp_path, secrets_dir):
    (tmp_path / "job-1").symlink_to(secrets_dir)
    with pytest.raises(UntrustedFile, match="is a symbolic link"):
        job_files.give_tree(tmp_path / "job-1", 12345, 12345)
    assert secrets_dir.lstat().st_uid == 0


@needs_root
def test_the_executor_refuses_a_job_whose_files_directory_is_a_link(tmp_path, secrets_dir):
    (tmp_path / "job-1").symlink_to(secrets_dir)
    spec = ExecutionSpec(
        "job-1-1", UNPRIVILEGED, ["true"], "/", {signing.JOB_FILES_VARIABLE: str(tmp_path / "job-1")}, [], 60
    )
    if not _has_unprivileged():
        pytest.skip(f"no account {UNPRIVILEGED!r}")
    executor = LocalExecutor(jobs_dir=str(tmp_path / "jobs"), run_as_owner=True)
    with pytest.raises(ExecutionRefused, match="its files directory is not safe to use"):
        executor.prepare_job_dir(executor.job_dir("job-1-1"), spec, UNPRIVILEGED)
    assert secrets_dir.lstat().st_uid == 0


@needs_root
def test_jobs_do_not_run_as_their_owners_from_a_jobs_dir_others_can_write(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    jobs.chmod(0o777)
    if not _has_unprivileged():
        pytest.skip(f"no account {UNPRIVILEGED!r}")
    executor = LocalExecutor(jobs_dir=str(jobs), run_as_owner=True)
    spec = ExecutionSpec("job-1-1", UNPRIVILEGED, ["true"], "/", {}, [], 60)
    with pytest.raises(ExecutionRefused, match="that no other account can write .* mode 777"):
        executor.prepare_job_dir(executor.job_dir("job-1-1"), spec, UNPRIVILEGED)
    assert list(jobs.iterdir()) == []


def test_a_new_jobs_dir_is_private_to_the_service(tmp_path):
    executor = LocalExecutor(jobs_dir=str(tmp_path / "jobs"))
    spec = ExecutionSpec("job-1-1", "anyone", ["true"], "/", {}, [], 60)
    executor.prepare_job_dir(executor.job_dir("job-1-1"), spec, None)
    assert stat.S_IMODE((tmp_path / "jobs").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "jobs" / "job-1-1").stat().st_mode) == 0o700


def test_job_uid_is_the_owners_with_run_as_owner_and_the_services_without(tmp_path):
    executor = LocalExecutor(jobs_dir=str(tmp_path))
    assert executor.job_uid("no-such-user-gpuslice") == os.geteuid()
    executor.run_as_owner = True
    assert executor.job_uid("no-such-user-gpuslice") is None
    assert executor.job_uid("root") == 0


# ------------------------------------------------------------------- the executor's run directory


def test_the_run_directorys_records_are_never_written_or_read_through_a_link(tmp_path, secrets_dir):
    """The run directory is root's alone; should a link appear there anyway, it is not followed."""
    run = tmp_path / "run"
    run.mkdir()
    (run / f".{jobdir.EXIT}.{os.getpid()}.{threading.get_ident()}.tmp").symlink_to(secrets_dir / "victim")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        jobdir.write_json_atomically(run / jobdir.EXIT, {"exit_code": 0})
    (run / jobdir.SPEC).symlink_to(secrets_dir / "victim")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        jobdir.read_json(run / jobdir.SPEC)
    (run / jobdir.LOG).symlink_to(secrets_dir / "secret")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        LocalExecutor.read_chunk(run / jobdir.LOG, 0, 100)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        _log_size_and_last_byte(run / jobdir.LOG)
    (run / jobdir.SPEC).unlink()
    jobdir.write_json_atomically(run / jobdir.SPEC, {"argv": ["true"]})
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        JobSupervisor(run, ["true"])  # it appends the job's output to its log as root
    assert (secrets_dir / "victim").read_bytes() == ORIGINAL
    assert (secrets_dir / "secret").read_bytes() == SECRET


def test_writers_racing_on_one_record_each_write_it_whole(tmp_path):
    # A preemption's stop request and a cancel's can be written at once from two threads of the
    # service: each must land whole (the last one winning), and neither may fail.
    target = tmp_path / jobdir.STOP_REQUEST
    failures: list[BaseException] = []
    start = threading.Barrier(4)

    def write(writer: int) -> None:
        start.wait()
        for attempt in range(200):
            try:
                jobdir.write_json_atomically(target, {"writer": writer, "attempt": attempt})
            except OSError as error:
                failures.append(error)

    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert jobdir.read_json(target)["attempt"] == 199
    assert [path.name for path in tmp_path.iterdir()] == [jobdir.STOP_REQUEST]


# ------------------------------------------------------------------- the job service's files


@pytest.fixture
def cell() -> CellPayload:
    return CellPayload(payload=b"cell bytes", python="3.11.2")


def test_writing_the_script_replaces_links_at_the_script_and_the_results(tmp_path, secrets_dir):
    files = tmp_path / "job-scripts" / "job-1"
    files.mkdir(parents=True)
    (files / "script.py").symlink_to(secrets_dir / "victim")
    (files / "results").symlink_to(secrets_dir / "victim-dir")
    assert _write_script(files, MINE, "print('hi')\n") == files / "script.py"
    assert (secrets_dir / "victim").read_bytes() == ORIGINAL
    assert (secrets_dir / "victim-dir" / "keep").read_bytes() == ORIGINAL
    assert (files / "script.py").read_text() == "print('hi')\n" and not (files / "script.py").is_symlink()
    assert (files / "results").is_dir() and not (files / "results").is_symlink()
    assert list((files / "results").iterdir()) == []


def test_writing_the_cell_replaces_links_at_the_payload_and_its_temporary_file(tmp_path, secrets_dir, cell):
    files = tmp_path / "job-scripts" / "job-1"
    files.mkdir(parents=True)
    (files / signing.PAYLOAD_FILE).symlink_to(secrets_dir / "victim")
    (files / f".{signing.PAYLOAD_FILE}.tmp").symlink_to(secrets_dir / "victim-2")
    (secrets_dir / "victim-2").write_bytes(ORIGINAL)
    key = signing.job_key(b"k" * 32, "job-1")
    path = _write_cell(files, MINE, key, "job-1", cell)
    assert path == files / signing.PAYLOAD_FILE and not path.is_symlink()
    assert signing.read_signed_payload(path).verify(key) == b"cell bytes"
    assert (secrets_dir / "victim").read_bytes() == ORIGINAL
    assert (secrets_dir / "victim-2").read_bytes() == ORIGINAL


def test_the_payload_written_by_path_does_not_follow_a_link_either(tmp_path, secrets_dir):
    (tmp_path / signing.PAYLOAD_FILE).symlink_to(secrets_dir / "victim")
    signing.write_signed_payload(tmp_path, b"k" * 32, "job-1", "3.11.2", b"payload")
    assert (secrets_dir / "victim").read_bytes() == ORIGINAL
    assert not (tmp_path / signing.PAYLOAD_FILE).is_symlink()
    (tmp_path / "elsewhere").symlink_to(secrets_dir)
    with pytest.raises(UntrustedFile):
        signing.write_signed_payload(tmp_path / "elsewhere", b"k" * 32, "job-1", "3.11.2", b"payload")
    assert sorted(p.name for p in secrets_dir.iterdir()) == ["secret", "victim", "victim-dir"]


def test_the_job_files_directory_itself_is_never_a_link(tmp_path, secrets_dir):
    (tmp_path / "job-scripts").mkdir()
    (tmp_path / "job-scripts" / "job-1").symlink_to(secrets_dir)
    with pytest.raises(UntrustedFile, match="job-1 is a symbolic link"):
        _write_script(tmp_path / "job-scripts" / "job-1", MINE, "print('hi')\n")
    assert sorted(p.name for p in secrets_dir.iterdir()) == ["secret", "victim", "victim-dir"]


def test_a_scripts_dir_others_can_write_is_refused_when_jobs_run_as_their_owners(tmp_path):
    scripts = tmp_path / "job-scripts"
    scripts.mkdir()
    scripts.chmod(0o777)
    with pytest.raises(UntrustedFile, match="scripts_dir .* is writable by others"):
        with _fresh_job_files(scripts / "job-1", frozenset({os.geteuid() + 1})):
            pass
    assert list(scripts.iterdir()) == []
    with _fresh_job_files(scripts / "job-1", MINE) as fd:  # jobs run as the service: its own business
        assert os.fstat(fd).st_uid == os.geteuid()


def job_service(tmp_path, run_as_owner: bool = False) -> JobService:
    executor = LocalExecutor(jobs_dir=str(tmp_path / "jobs"), run_as_owner=run_as_owner)
    return JobService(None, None, executor, scripts_dir=str(tmp_path / "job-scripts"))


def test_the_service_serves_results_the_job_wrote(tmp_path):
    service = job_service(tmp_path)
    record = SimpleNamespace(id="job-1", owner="alice")
    results = tmp_path / "job-scripts" / "job-1" / "results"
    results.mkdir(parents=True)
    (results / "values.pickle").write_bytes(b"values")
    (results / "summary.json").write_text(json.dumps({"values_available": True, "values": ["x"]}))
    assert asyncio.run(service.result_values(record)) == b"values"
    assert asyncio.run(service.result_summary(record)) == {"values_available": True, "values": ["x"]}
    (results / "summary.json").write_text("not json")
    assert asyncio.run(service.result_summary(record)) is None


def test_the_service_serves_no_result_through_a_link(tmp_path, secrets_dir):
    service = job_service(tmp_path)
    record = SimpleNamespace(id="job-1", owner="alice")
    results = tmp_path / "job-scripts" / "job-1" / "results"
    results.mkdir(parents=True)
    (secrets_dir / "summary").write_text(json.dumps({"values_available": True, "values": ["SECRET"]}))
    (results / "values.pickle").symlink_to(secrets_dir / "secret")
    (results / "summary.json").symlink_to(secrets_dir / "summary")
    with pytest.raises(UntrustedFile, match="values.pickle is a symbolic link"):
        asyncio.run(service.result_values(record))
    assert asyncio.run(service.result_summary(record)) is None


@needs_root
def test_with_run_as_owner_only_the_owners_files_are_results(tmp_path):
    if not _has_unprivileged():
        pytest.skip(f"no account {UNPRIVILEGED!r}")
    account = pwd.getpwnam(UNPRIVILEGED)
    service = job_service(tmp_path, run_as_owner=True)
    results = tmp_path / "job-scripts" / "job-1" / "results"
    results.mkdir(parents=True)
    (results / "values.pickle").write_bytes(b"root's, not the job's")
    record = SimpleNamespace(id="job-1", owner=UNPRIVILEGED)
    with pytest.raises(UntrustedFile, match="belongs to uid 0"):
        asyncio.run(service.result_values(record))
    os.chown(results / "values.pickle", account.pw_uid, account.pw_gid)
    assert asyncio.run(service.result_values(record)) == b"root's, not the job's"
    homeless = SimpleNamespace(id="job-1", owner="no-such-user-gpuslice")
    with pytest.raises(UntrustedFile):
        asyncio.run(service.result_values(homeless))


# ----------------------------------------------------- links planted by an unprivileged account


def test_links_planted_by_the_owner_are_replaced_not_written_through(secrets_dir, cell):
    """The service-side write path of a job's second run, after its owner (not root) planted links
    at the script, the payload, the payload's temporary file and the results directory."""
    account = unprivileged_account()
    shared = world_traversable_dir("gpuslice-planted-")
    try:
        files = shared / "job-scripts" / "job-1"
        files.mkdir(parents=True, mode=0o700)
        os.chown(files, account.pw_uid, account.pw_gid)
        names = {
            "script.py": secrets_dir / "victim",
            signing.PAYLOAD_FILE: secrets_dir / "victim-2",
            f".{signing.PAYLOAD_FILE}.tmp": secrets_dir / "victim-3",
            "results": secrets_dir / "victim-dir",
        }
        for target in ("victim-2", "victim-3"):
            (secrets_dir / target).write_bytes(ORIGINAL)
        as_unprivileged(
            f"""
            import os
            for name, target in {[(name, str(target)) for name, target in names.items()]!r}:
                os.symlink(target, os.path.join({str(files)!r}, name))
            """
        )
        assert all((files / name).is_symlink() for name in names)
        owners = frozenset({account.pw_uid})
        _write_script(files, owners, "print('second run')\n")
        key = signing.job_key(b"k" * 32, "job-1")
        _write_cell(files, owners, key, "job-1", cell)
        for target in ("victim", "victim-2", "victim-3", "victim-dir/keep"):
            assert (secrets_dir / target).read_bytes() == ORIGINAL, target
        assert (files / "script.py").read_text() == "print('second run')\n"
        assert signing.read_signed_payload(files / signing.PAYLOAD_FILE).verify(key) == b"cell bytes"
        assert (files / "results").is_dir() and not (files / "results").is_symlink()
    finally:
        shutil.rmtree(shared)
