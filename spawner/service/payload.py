"""What the service hands the runner of a cell job: the payload file, its signature and its key.

The service accepts a cell's payload (a cloudpickle bundle it never unpickles: it runs as root),
and at launch writes it into the job's own directory signed with HMAC-SHA256. The runner, which
does unpickle it, first checks that signature, so a payload changed on disk after the service
accepted it (or one written there by anybody else) never runs.

Keys: one master key, created once in the state directory with mode 0600, and for each job a key
derived from it and the job's id. Only the derived key reaches the job (in its environment), so a
job that leaks its key tells nothing about the key of any other job, and the master key never
leaves the service. Standard library only (and :mod:`.job_files`, which is too): the runner
imports this before anything else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import job_files

MASTER_KEY_FILE = "job-signing.key"
"""The master key's file name in the service's state directory."""
PAYLOAD_FILE = "cell.json"
"""The signed payload document in a job's files directory; the runner's one argument."""
RESULTS_DIR = "results"
"""Where the runner writes a job's results, inside the job's files directory."""
VALUES_FILE = "values.pickle"
"""The cloudpickle of ``{name: value}`` the cell returned (only the runner and the notebook unpickle it)."""
SUMMARY_FILE = "summary.json"
"""JSON the service may read: the names returned, those left out and why, or the cell's exception."""

KEY_VARIABLE = "GPUSLICE_PAYLOAD_KEY"
"""The job's variable holding its derived key (hex); the runner removes it before the cell runs."""
JOB_FILES_VARIABLE = "GPUSLICE_JOB_FILES"
"""The job's environment variable naming its files directory (payload, script, results).

An executor that runs jobs as their owners makes this directory the owner's, so the job can read
its payload and write its results.
"""
RESULTS_VARIABLE = "GPUSLICE_RESULTS_DIR"
"""The job's environment variable naming the directory the runner writes results into."""

KEY_BYTES = 32


class SignatureError(ValueError):
    """A payload whose signature does not verify: it is not what the service accepted."""


def load_or_create_master_key(directory: Path) -> bytes:
    """The master key kept in ``directory``, created (mode 0600, never overwritten) on first use."""
    path = Path(directory) / MASTER_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < KEY_BYTES:
            raise ValueError(
                f"the job signing key in {path} is too short; delete it to make a new one"
            ) from None
        return key
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(descriptor, "w") as file:
        file.write(key.hex() + "\n")
    return key


def job_key(master_key: bytes, job_id: str) -> bytes:
    """The key of one job: an HMAC of its id under the master key (a one-way derivation)."""
    return hmac.new(master_key, b"gpuslice-job-key\0" + job_id.encode(), hashlib.sha256).digest()


def _message(job_id: str, python: str, payload: bytes) -> bytes:
    """What is signed: the payload bound to its job and to the Python that packed it."""
    return b"\0".join([b"gpuslice-cell-v1", job_id.encode(), python.encode(), payload])


def sign(key: bytes, job_id: str, python: str, payload: bytes) -> str:
    return hmac.new(key, _message(job_id, python, payload), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class SignedPayload:
    """A cell payload as the runner receives it, before its signature is checked."""

    job_id: str
    python: str
    payload: bytes
    signature: str

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "python": self.python,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signature": self.signature,
        }

    def verify(self, key: bytes) -> bytes:
        """The payload bytes if the signature is the service's under ``key``; SignatureError otherwise."""
        expected = sign(key, self.job_id, self.python, self.payload)
        if not hmac.compare_digest(expected, self.signature):
            raise SignatureError(
                f"the payload of job {self.job_id} does not carry the service's signature: it was changed "
                "after the service accepted it, or was not accepted by it; submit the cell again"
            )
        return self.payload


def write_signed_payload(
    directory: Path, key: bytes, job_id: str, python: str, payload: bytes, *, dir_fd: int | None = None
) -> Path:
    """Sign ``payload`` for ``job_id`` and write it as the runner's input file; its path.

    ``directory`` may be its owner's (see :data:`JOB_FILES_VARIABLE`), so the file is written as
    :func:`.job_files.replace_file` does: a new file renamed into place through the directory's
    descriptor (``dir_fd``, or ``directory`` opened without following a link), so that a link the
    owner left at the payload's name (or at its temporary file's) is replaced, never written through.
    """
    signed = SignedPayload(job_id, python, payload, sign(key, job_id, python, payload))
    document = json.dumps(signed.to_json()).encode("utf-8")
    if dir_fd is None:
        with job_files.opened_directory(directory) as opened:
            job_files.replace_file(opened, PAYLOAD_FILE, document)
    else:
        job_files.replace_file(dir_fd, PAYLOAD_FILE, document)
    return Path(directory) / PAYLOAD_FILE


def read_signed_payload(path: Path) -> SignedPayload:
    """The payload document at ``path``, not yet verified; ValueError if it is not one."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        return SignedPayload(
            job_id=str(document["job_id"]),
            python=str(document["python"]),
            payload=base64.b64decode(document["payload"], validate=True),
            signature=str(document["signature"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a gpuslice cell payload ({error})") from None
