"""Profiles: the choices of the spawn dropdown, each a GPU slice plus CPU, memory and an image.

Admins write them in the profiles directory (``profiles/`` beside ``hub_config.py``). Every
``*.yaml`` file there is read in name order, except ``gpus*.yaml``, which is the GPU inventory
(:mod:`spawner.inventory.static`). A file holds a ``profiles:`` list, a ``quotas:`` mapping, or both;
quotas live in one file only, by convention ``profiles/quotas.yaml``.

Each file is checked against ``profiles.schema.json`` (JSON Schema 2020-12), then for what a schema
cannot say: a slug used twice across files, two defaults, ``milli_gpu`` and ``gpus`` together,
guarantees above limits. Every problem is reported at once, each naming file, line and field::

    profiles/default.yaml:14: profiles[2].milli_gpu: expected an integer between 1 and 999 (use gpus: 1
    for a whole GPU), got 1500

so that one start of the hub (or one ``gpuslice profiles check``) shows the admin the whole list.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from spawner.core.quota import QuotaPolicy
from spawner.core.units import SliceRequest, describe_milli
from spawner.core.vocabulary import DEV_POOL

from . import yaml_lines
from .kube_backends import KubeSettings, kube_settings, mig_problem
from .profile_options import ProfileOption, option_problems, profile_options
from .quotas import entry_count, quota_policy
from .yaml_problems import (
    ConfigFileError,
    Problem,
    duplicate_key_problems,
    problem_at,
    read_yaml,
    render_path,
    schema_problems,
)

SCHEMA_RESOURCE = "profiles.schema.json"
PROFILE_FILES = "*.yaml"
INVENTORY_FILES = "gpus*.yaml"
"""GPU inventory files share the directory; they are not profiles and are skipped here."""

DEFAULT_POOL = DEV_POOL
"""Notebook servers slice the dev GPUs unless a profile says otherwise (see DESIGN.md)."""

MIB = 1024 * 1024
_SIZE = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>[KMGT])i?$")
_UNIT_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4}


class ProfileConfigError(ConfigFileError):
    """The profiles directory cannot be used; ``errors`` lists every problem found, one per line."""

    subject = "the profiles"


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema of one profiles file, shipped inside the package."""
    return json.loads(resources.files("spawner.config").joinpath(SCHEMA_RESOURCE).read_text())


def parse_size_mib(text: str) -> int:
    """``'8G'`` -> 8192: a memory size in MiB, rounded up to a whole MiB.

    K/M/G/T are binary multiples, exactly as JupyterHub's ``mem_limit`` (ByteSpecification) reads
    them, so ``8G`` and ``8Gi`` are the same size and a profile means what the same string would
    mean in ``c.Spawner.mem_limit``.
    """
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size such as 512M or 8G")
    size_bytes = Fraction(match["number"]) * 1024 ** _UNIT_POWERS[match["unit"]]
    return math.ceil(size_bytes / MIB)


@dataclass(frozen=True, slots=True)
class Profile:
    """One choice of the dropdown, as the admin wrote it.

    ``milli_gpu`` (a fraction of one GPU) or ``gpus`` (whole GPUs on one node) or neither (CPU
    only). CPU is in cores and memory in MiB; a limit is what the server may use, a guarantee is
    what is set aside for it. ``source`` ("profiles/default.yaml:12") says where it was written, so
    that later messages (a refused spawn, an admin page) can point back at the file.
    """

    slug: str
    display_name: str
    description: str = ""
    milli_gpu: int = 0
    gpus: int = 0
    gpu_memory_mib: int | None = None
    gpu_models: tuple[str, ...] = ()
    pool: str = DEFAULT_POOL
    cpu_limit: float | None = None
    cpu_guarantee: float | None = None
    mem_limit_mib: int | None = None
    mem_guarantee_mib: int | None = None
    image: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict, hash=False)
    groups: frozenset[str] = frozenset()
    default: bool = False
    source: str = field(default="", compare=False)
    options: tuple[ProfileOption, ...] = field(default=(), hash=False)
    """KubeSpawner-style ``profile_options`` (:mod:`.profile_options`): choices inside the profile,
    applied to a Kubernetes pod; the local spawner has no pod for them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu_models", tuple(self.gpu_models))
        object.__setattr__(self, "groups", frozenset(self.groups))
        object.__setattr__(self, "environment", MappingProxyType(dict(self.environment)))
        # Build the request once so that a profile no allocator could ever grant cannot exist.
        self.slice_request  # noqa: B018

    @property
    def has_gpu(self) -> bool:
        return bool(self.milli_gpu or self.gpus)

    @property
    def slice_request(self) -> SliceRequest:
        """What a server of this profile asks the allocator for.

        CPU and memory are the guarantees, falling back to the limits when no guarantee is given:
        the allocator sets aside what a server is promised, not the most it may burst to, which
        is how Kubernetes turns requests and limits into a node's reservations.
        """
        cores = self.cpu_guarantee if self.cpu_guarantee is not None else self.cpu_limit
        memory = self.mem_guarantee_mib if self.mem_guarantee_mib is not None else self.mem_limit_mib
        return SliceRequest(
            milli_gpu=self.milli_gpu,
            gpus=self.gpus,
            gpu_memory_mib=self.gpu_memory_mib,
            cpu_milli=round((cores or 0) * 1000),
            memory_mib=memory or 0,
            gpu_models=frozenset(self.gpu_models),
            pool=self.pool,
        )

    def describe(self) -> str:
        """The dropdown's summary: ``'1/8 GPU (10 GB) · 2 CPU · 8 GB'``.

        It shows the limits, what the person can actually use, and the guarantees only where no
        limit is given. GPU memory is shown when the profile fixes it; otherwise it depends on the
        card the slice lands on, and a figure here would be a guess.
        """
        parts = [self._describe_gpu()]
        cores = self.cpu_limit if self.cpu_limit is not None else self.cpu_guarantee
        if cores is not None:
            parts.append(f"{_figure(cores)} CPU")
        memory = self.mem_limit_mib if self.mem_limit_mib is not None else self.mem_guarantee_mib
        if memory is not None:
            parts.append(_memory_text(memory))
        return " · ".join(parts)

    def _describe_gpu(self) -> str:
        models = " or ".join(self.gpu_models)
        if self.milli_gpu:
            text = f"{describe_milli(self.milli_gpu)} {models or 'GPU'}"
        elif self.gpus:
            text = f"{self.gpus} × {models}" if models else f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"
        else:
            return "no GPU"
        if self.gpu_memory_mib is not None:
            text += f" ({_memory_text(self.gpu_memory_mib)})"
        return text

    def visible_to(self, user_groups: Iterable[str], is_admin: bool) -> bool:
        """Whether a user in ``user_groups`` may see (and so choose) this profile.

        A profile without groups is for everyone; admins see every profile, so that they can try
        what their users get.
        """
        return is_admin or not self.groups or not self.groups.isdisjoint(user_groups)


@dataclass(frozen=True)
class ProfileSet:
    """Every profile in file order, plus the quotas, as loaded from one profiles directory."""

    profiles: tuple[Profile, ...]
    quotas: QuotaPolicy = field(default_factory=QuotaPolicy)
    directory: str = ""
    files: tuple[str, ...] = ()
    kubernetes: KubeSettings = field(default_factory=KubeSettings)
    """The slice back-end of each GPU pool on Kubernetes (:mod:`.kube_backends`); unused elsewhere."""

    def __iter__(self) -> Iterator[Profile]:
        return iter(self.profiles)

    def __len__(self) -> int:
        return len(self.profiles)

    @cached_property
    def by_slug(self) -> Mapping[str, Profile]:
        return MappingProxyType({profile.slug: profile for profile in self.profiles})

    @property
    def quota_entries(self) -> int:
        return entry_count(self.quotas)

    def visible_to(self, user_groups: Iterable[str], is_admin: bool) -> list[Profile]:
        """The profiles a user may choose from, in file order."""
        groups = set(user_groups)
        return [profile for profile in self.profiles if profile.visible_to(groups, is_admin)]

    def default_for(self, user_groups: Iterable[str], is_admin: bool) -> Profile | None:
        """The profile preselected for a user: the default if they may see it, else their first."""
        visible = self.visible_to(user_groups, is_admin)
        return next((profile for profile in visible if profile.default), visible[0] if visible else None)


def profile_files(directory: Path) -> list[Path]:
    """The files of ``directory`` that hold profiles or quotas, in name order."""
    return sorted(
        path
        for path in directory.glob(PROFILE_FILES)
        if path.is_file() and not fnmatch.fnmatch(path.name, INVENTORY_FILES)
    )


def load_profiles(directory: str | os.PathLike[str]) -> ProfileSet:
    """The profiles and quotas in ``directory``; raises :class:`ProfileConfigError` listing every problem."""
    shown_dir = os.fspath(directory)
    folder = Path(directory)
    if not folder.is_dir():
        raise ProfileConfigError(
            shown_dir, [f"{shown_dir}: no such directory; expected a directory of profile *.yaml files"]
        )
    loader = _DirectoryLoader(shown_dir)
    for path in profile_files(folder):
        loader.read(path)
    return loader.finish()


class _DirectoryLoader:
    """Reads the files of one profiles directory, gathering what they hold and every problem."""

    def __init__(self, shown_dir: str) -> None:
        self.shown_dir = shown_dir
        self.filenames: list[str] = []
        self.problems: list[Problem] = []
        self.profiles: list[Profile] = []
        self.claims: list[_Claim] = []
        self.profiles_given = False
        self.quotas_place: _Place | None = None
        self.quotas = QuotaPolicy()
        self.places: list[_Place] = []
        self.kubernetes_place: _Place | None = None
        self.kubernetes = KubeSettings()

    def read(self, path: Path) -> None:
        filename = os.path.join(self.shown_dir, path.name)
        self.filenames.append(filename)
        document, read_problems = read_yaml(path, filename)
        if read_problems:
            self.problems += read_problems
            return
        invalid = list(schema_problems(filename, document, load_schema()))
        self.problems += duplicate_key_problems(filename, document)
        self.problems += invalid
        if not isinstance(document, Mapping):
            return
        self.profiles_given = self.profiles_given or "profiles" in document
        profiles, claims, problems = _build_profiles(filename, document, invalid)
        self.profiles += [profile for profile, _ in profiles]
        self.places += [place for _, place in profiles]
        self.claims += claims
        self.problems += problems
        if "quotas" in document:
            self._take_quotas(_Place(filename, document, ("quotas",)), invalid)
        if "kubernetes" in document:
            self._take_kubernetes(_Place(filename, document, ("kubernetes",)), invalid)

    def _take_kubernetes(self, place: _Place, invalid: Sequence[Problem]) -> None:
        if self.kubernetes_place is not None:
            text = f"kubernetes is already given in {self.kubernetes_place.where}; keep it in one file"
            self.problems.append(problem_at(place.filename, place.document, place.path, text))
            return
        self.kubernetes_place = place
        if not any(problem.concerns(place.path) for problem in invalid):
            self.kubernetes = kube_settings(place.document["kubernetes"])

    def _backend_problems(self) -> list[Problem]:
        """Profiles their pool's Kubernetes back-end cannot run: a slice no MIG profile holds."""
        problems = []
        for profile, place in zip(self.profiles, self.places, strict=True):
            if self.kubernetes.for_pool(profile.pool).backend != "mig" or not profile.milli_gpu:
                continue
            text = mig_problem(profile.gpu_models, profile.milli_gpu, profile.gpu_memory_mib)
            if text:
                problems.append(place.problem("milli_gpu", f"{text} (kubernetes.pools.{profile.pool})"))
        return problems

    def _take_quotas(self, place: _Place, invalid: Sequence[Problem]) -> None:
        if self.quotas_place is not None:
            text = f"quotas are already given in {self.quotas_place.where}; keep every quota in one file"
            self.problems.append(problem_at(place.filename, place.document, place.path, text))
            return
        self.quotas_place = place
        if not any(problem.concerns(place.path) for problem in invalid):
            self.quotas = quota_policy(place.document["quotas"])

    def finish(self) -> ProfileSet:
        problems = self.problems + _cross_file_problems(self.claims) + self._backend_problems()
        if not self.profiles_given and not problems:
            text = (
                "no profiles found; expected *.yaml files with a 'profiles:' list "
                "(gpus*.yaml files are the GPU inventory and hold no profiles)"
            )
            problems.append(Problem(self.shown_dir, 0, (), text))
        if problems:
            order = {filename: position for position, filename in enumerate(self.filenames)}
            problems.sort(key=lambda problem: (order.get(problem.filename, -1), problem.line))
            raise ProfileConfigError(self.shown_dir, [str(problem) for problem in problems])
        return ProfileSet(
            profiles=tuple(self.profiles),
            quotas=self.quotas,
            directory=self.shown_dir,
            files=tuple(self.filenames),
            kubernetes=self.kubernetes,
        )


@dataclass(frozen=True)
class _Place:
    """Where something was written (a profile, the quotas), for messages that point back at it."""

    filename: str
    document: Any
    path: tuple[Any, ...]

    @property
    def location(self) -> str:
        """``'profiles/default.yaml:12'``."""
        line = yaml_lines.line_of(self.document, self.path)
        return f"{self.filename}:{line}" if line else self.filename

    @property
    def where(self) -> str:
        """``'profiles/default.yaml:12 (profiles[1])'``."""
        return f"{self.location} ({render_path(self.path)})"

    def problem(self, key: str, text: str) -> Problem:
        return problem_at(self.filename, self.document, (*self.path, key), text)


@dataclass(frozen=True)
class _Claim:
    """What one entry claims across the whole directory: its slug, and whether it is the default.

    Claims are taken from entries with other mistakes too, so that a slug used twice is reported in
    the same run as a typo elsewhere in one of the two profiles.
    """

    slug: str | None
    default: bool
    place: _Place


def _build_profiles(
    filename: str, document: Mapping[str, Any], invalid: Sequence[Problem]
) -> tuple[list[tuple[Profile, _Place]], list[_Claim], list[Problem]]:
    """The file's profiles that passed the schema (each with where it was written), every entry's
    claims, and what the schema missed."""
    entries = document.get("profiles")
    if not isinstance(entries, list):
        return [], [], []
    profiles: list[tuple[Profile, _Place]] = []
    claims: list[_Claim] = []
    problems: list[Problem] = []
    for index, entry in enumerate(entries):
        path = ("profiles", index)
        if not isinstance(entry, Mapping):
            continue
        place = _Place(filename, document, path)
        slug_is_valid = not any(problem.path == (*path, "slug") for problem in invalid)
        slug = entry.get("slug") if slug_is_valid and isinstance(entry.get("slug"), str) else None
        claims.append(_Claim(slug, entry.get("default") is True, place))
        if any(problem.concerns(path) for problem in invalid):
            continue
        entry_problems = _entry_problems(place, entry)
        if entry_problems:
            problems += entry_problems
            continue
        profiles.append((_profile(entry, source=place.location), place))
    return profiles, claims, problems


def _entry_problems(place: _Place, entry: Mapping[str, Any]) -> list[Problem]:
    """What one schema-valid profile says that cannot be granted or makes no sense together."""
    problems = []
    if "milli_gpu" in entry and "gpus" in entry:
        problems.append(
            place.problem(
                "gpus",
                "expected either milli_gpu (a fraction of one GPU) or gpus (whole GPUs), got both "
                f"(milli_gpu: {entry['milli_gpu']}, gpus: {entry['gpus']}); drop one",
            )
        )
    if "milli_gpu" not in entry and "gpus" not in entry:
        for key in ("gpu_memory_mib", "gpu_models"):
            if key in entry:
                text = f"a CPU-only profile has no GPU for it; add milli_gpu or gpus, or drop {key}"
                problems.append(place.problem(key, text))
    sizes = {key: parse_size_mib(entry[key]) for key in ("mem_limit", "mem_guarantee") if key in entry}
    for key, mib in sizes.items():
        if mib == 0:
            problems.append(place.problem(key, f"expected a size > 0, got {entry[key]!r}"))
    if sizes.get("mem_guarantee", 0) > sizes.get("mem_limit", math.inf):
        text = f"expected at most mem_limit ({entry['mem_limit']}), got {entry['mem_guarantee']!r}"
        problems.append(place.problem("mem_guarantee", text))
    if entry.get("cpu_guarantee", 0) > entry.get("cpu_limit", math.inf):
        limit, guarantee = _figure(entry["cpu_limit"]), _figure(entry["cpu_guarantee"])
        text = f"expected at most cpu_limit ({limit}), got {guarantee}"
        problems.append(place.problem("cpu_guarantee", text))
    for path, text in option_problems(entry):
        problems.append(problem_at(place.filename, place.document, (*place.path, *path), text))
    return problems


def _profile(entry: Mapping[str, Any], source: str) -> Profile:
    """A :class:`Profile` from one checked entry: YAML numbers and lists become the field types."""

    def optional(key: str, convert: Any) -> Any:
        return convert(entry[key]) if key in entry else None

    return Profile(
        slug=entry["slug"],
        display_name=entry["display_name"],
        description=entry.get("description", ""),
        milli_gpu=int(entry.get("milli_gpu", 0)),
        gpus=int(entry.get("gpus", 0)),
        gpu_memory_mib=optional("gpu_memory_mib", int),
        gpu_models=tuple(entry.get("gpu_models", ())),
        pool=entry.get("pool", DEFAULT_POOL),
        cpu_limit=optional("cpu_limit", float),
        cpu_guarantee=optional("cpu_guarantee", float),
        mem_limit_mib=optional("mem_limit", parse_size_mib),
        mem_guarantee_mib=optional("mem_guarantee", parse_size_mib),
        image=entry.get("image"),
        environment=dict(entry.get("environment", {})),
        groups=frozenset(entry.get("groups", ())),
        default=bool(entry.get("default", False)),
        source=source,
        options=profile_options(entry),
    )


def _cross_file_problems(claims: Sequence[_Claim]) -> list[Problem]:
    """Slugs used twice and defaults given twice, anywhere in the directory."""
    problems = []
    first_by_slug: dict[str, _Place] = {}
    first_default: _Place | None = None
    for claim in claims:
        if claim.slug is not None and claim.slug in first_by_slug:
            first = first_by_slug[claim.slug]
            text = f"slug {claim.slug!r} is already used by {first.where}; expected a unique slug"
            problems.append(claim.place.problem("slug", text))
        elif claim.slug is not None:
            first_by_slug[claim.slug] = claim.place
        if claim.default and first_default is None:
            first_default = claim.place
        elif claim.default:
            text = f"only one profile may be the default, and {first_default.where} already is"
            problems.append(claim.place.problem("default", text))
    return problems


def _figure(value: float) -> str:
    """``2.0`` -> ``'2'``, ``0.5`` -> ``'0.5'``: figures as people write them."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _memory_text(mib: int) -> str:
    """``10240`` -> ``'10 GB'``, ``512`` -> ``'512 MB'`` (binary units, named as people name them)."""
    return f"{_figure(mib / 1024)} GB" if mib >= 1024 else f"{mib} MB"
