"""The cell-payload format: what ``%%submit`` packs and the in-job runner unpacks.

Both sides import it from here, below them both, so that packing (:mod:`spawner.magic.capture`)
and unpacking (:mod:`spawner.service.runner`) cannot drift apart, and the notebook never imports
the service to speak to it. The service itself only carries the bytes: it checks their size and
encoding, signs them, and never unpickles them (it runs as root); only the runner, as the job's
owner, calls :meth:`CellBundle.from_bytes`. Standard library only: the runner imports this before
anything else.
"""

from __future__ import annotations

import pickle
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

BUNDLE_FORMAT = 1
"""The version of the bundle's fields; a runner refuses a bundle of another format."""

CELL_MODE = "cell"
"""A bundle of a ``%%submit`` cell."""
FILE_MODE = "file"
"""A bundle of ``%submit script.py args``: a file of the working directory, run with its arguments."""


@dataclass
class CellBundle:
    """What ``%%submit`` sends: the code to run and everything it needs from the notebook.

    ``values`` is itself a cloudpickle, loaded only after the local modules are in place and the
    imports ran, since unpickling a value may need them. The rest are plain strings and lists.
    """

    source: str
    """The cell's Python source (IPython syntax already turned into Python), or the script's."""
    filename: str
    """How tracebacks name the code: ``<cell>``, or the script's path relative to the working directory."""
    mode: str = CELL_MODE
    """``cell`` for ``%%submit``, ``file`` for ``%submit script.py args``."""
    argv: list[str] = field(default_factory=list)
    """``sys.argv`` of a script (its name, then its arguments); empty for a cell."""
    imports: list[str] = field(default_factory=list)
    """Import statements that rebind the modules the cell uses, e.g. ``import numpy as np``."""
    modules: dict[str, str] = field(default_factory=dict)
    """Local modules by value: path relative to the working directory -> source."""
    values: bytes = b""
    """cloudpickle of ``{name: value}``: notebook functions and classes by value, small data."""
    returns: list[str] = field(default_factory=list)
    """Names whose values come back: the ``--out`` names, else what the cell assigns."""
    out_given: bool = False
    """Whether ``returns`` was asked for with ``--out`` (so a missing name is worth a note)."""
    python: str = field(default_factory=platform.python_version)
    """The Python that packed the bundle: pickled functions and classes only load in its major.minor."""
    format: int = BUNDLE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The bundle's fields as a plain dictionary (what :meth:`to_bytes` pickles)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: Any) -> CellBundle:
        """The bundle whose fields are ``fields``; ``ValueError`` for anything not of this format."""
        if not isinstance(fields, dict) or fields.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"the payload is not a gpuslice cell bundle of format {BUNDLE_FORMAT}")
        return cls(**fields)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self.to_dict(), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, payload: bytes) -> CellBundle:
        """Unpickle a bundle: only ever in the job, as its owner, after the signature was checked."""
        return cls.from_dict(pickle.loads(payload))
