"""A profile's ``profile_options``: choices inside one profile (an image, say), in KubeSpawner's shape.

A profile may offer options the person picks beside the profile itself, written exactly as
KubeSpawner's ``profile_list`` writes them, so a z2jh admin's existing options move over unchanged::

    profile_options:
      image:
        display_name: Image
        choices:
          pytorch: {display_name: PyTorch, default: true, kubespawner_override: {image: ...}}
          tensorflow: {display_name: TensorFlow, kubespawner_override: {image: ...}}
        unlisted_choice:            # optional: a free-text choice, checked by validation_regex
          enabled: true
          display_name: Image name
          validation_regex: '^quay\\.io/jupyter/.+$'
          kubespawner_override: {image: '{value}'}

The chosen option arrives in ``user_options`` as KubeSpawner names it (``{"profile": slug,
"image": "pytorch"}`` or ``{"image--unlisted-choice": "..."}``) and its ``kubespawner_override`` is
applied to the pod by :class:`spawner.hub.kube.KubeGPUSpawner`, after the profile and before the
slice, so the slice always wins. The local spawner has no pod for them and ignores them.

An override may set any configurable KubeSpawner setting except those in :data:`HELD_SETTINGS`:
the settings gpuslice itself derives from the profile and its lease (resources, placement,
privilege), which an option would otherwise use to hold more than the quota counted; nor may its
``environment`` name the devices a container sees (:data:`DEVICE_VARIABLES`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

UNLISTED_SUFFIX = "--unlisted-choice"
"""How KubeSpawner names the free-text value of an option in ``user_options``: ``image--unlisted-choice``."""

_COUNTED = "gpuslice sets it from the profile, whose CPU and memory the quota and the allocator counted"
_SLICE = "the pool's back-end sets it so the pod holds its GPU slice and lands where the slice is"
_PER_START = "gpuslice sets it at every start (the lease's labels, the back-end's annotations)"
_PRIVILEGE = "it could give the container every GPU of its node, beyond its slice"
_HUB = "it is the hub's own setting, not a per-server choice"
HELD_SETTINGS: Mapping[str, str] = MappingProxyType(
    {
        "cpu_limit": _COUNTED,
        "cpu_guarantee": _COUNTED,
        "mem_limit": _COUNTED,
        "mem_guarantee": _COUNTED,
        "extra_resource_limits": _SLICE,
        "extra_resource_guarantees": _SLICE,
        "node_selector": _SLICE,
        "node_affinity_required": _SLICE,
        "tolerations": _SLICE,
        "scheduler_name": _SLICE,
        "extra_labels": _PER_START,
        "extra_annotations": _PER_START,
        "privileged": _PRIVILEGE,
        "allow_privilege_escalation": _PRIVILEGE,
        "container_security_context": _PRIVILEGE,
        "pod_security_context": _PRIVILEGE,
        "extra_container_config": _PRIVILEGE,
        "extra_pod_config": _PRIVILEGE,
        "extra_containers": _PRIVILEGE,
        "init_containers": _PRIVILEGE,
        "profile_list": _HUB,
        "options_form": _HUB,
        "options_from_form": _HUB,
        "profile_form_template": _HUB,
        "pod_name_template": _HUB,
        "slug_scheme": _HUB,
        "namespace": _HUB,
        "enable_user_namespaces": _HUB,
    }
)
"""KubeSpawner settings an option may not override, each with the reason the error gives."""

DEVICE_VARIABLES = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
"""Variables an option's ``environment`` may not set: the device plugin chooses the devices a
container sees, and with its environment strategy NVIDIA_VISIBLE_DEVICES=all would show them all."""
DEVICE_REASON = "the device plugin chooses the GPUs a pod sees"


class OptionRefused(ValueError):
    """``user_options`` name a choice the profile does not offer (or a value its regex refuses)."""


@dataclass(frozen=True)
class OptionChoice:
    """One listed choice of an option."""

    slug: str
    display_name: str
    default: bool = False
    kubespawner_override: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnlistedChoice:
    """A free-text choice: its value replaces ``{value}`` in the strings of its override."""

    display_name: str
    display_name_in_choices: str = "Other..."
    validation_regex: str | None = None
    validation_regex_error: str = ""
    kubespawner_override: Mapping[str, Any] = field(default_factory=dict)

    def overrides(self, value: str) -> dict[str, Any]:
        return {name: _format(setting, value) for name, setting in self.kubespawner_override.items()}


@dataclass(frozen=True)
class ProfileOption:
    """One option of a profile (``image``), its listed choices and, maybe, a free-text one."""

    name: str
    display_name: str
    choices: tuple[OptionChoice, ...]
    unlisted: UnlistedChoice | None = None

    @property
    def default_choice(self) -> OptionChoice:
        """The choice marked ``default``, else the first, as KubeSpawner picks it."""
        return next((choice for choice in self.choices if choice.default), self.choices[0])

    def overrides_for(self, user_options: Mapping[str, Any]) -> dict[str, Any]:
        """The override of what ``user_options`` chose for this option (its default if nothing).

        A free-text value wins over a listed choice, as in KubeSpawner; either must be one this
        option offers, else :class:`OptionRefused` says which ones it does.
        """
        value = user_options.get(self.name + UNLISTED_SUFFIX)
        if value:
            if self.unlisted is None:
                raise OptionRefused(
                    f"{self.display_name} takes no value of your own; choose one of: {self.listing}"
                )
            value = str(value)
            if self.unlisted.validation_regex and not re.fullmatch(self.unlisted.validation_regex, value):
                why = (
                    self.unlisted.validation_regex_error or f"it must match {self.unlisted.validation_regex}"
                )
                raise OptionRefused(f"{value!r} cannot be the {self.display_name}: {why}")
            return self.unlisted.overrides(value)
        chosen = user_options.get(self.name)
        if not chosen:
            return dict(self.default_choice.kubespawner_override)
        for choice in self.choices:
            if choice.slug == chosen:
                return dict(choice.kubespawner_override)
        raise OptionRefused(f"There is no {self.display_name} {chosen!r}; choose one of: {self.listing}")

    @property
    def listing(self) -> str:
        return ", ".join(choice.slug for choice in self.choices)


def profile_option_overrides(
    options: tuple[ProfileOption, ...], user_options: Mapping[str, Any]
) -> dict[str, Any]:
    """Every option's override for ``user_options``, in the order the profile lists its options."""
    overrides: dict[str, Any] = {}
    for option in options:
        overrides.update(option.overrides_for(user_options))
    return overrides


def profile_options(entry: Mapping[str, Any]) -> tuple[ProfileOption, ...]:
    """The options of one schema-valid profile entry."""

    def choice(slug: str, written: Mapping[str, Any]) -> OptionChoice:
        return OptionChoice(
            slug,
            written["display_name"],
            bool(written.get("default", False)),
            dict(written.get("kubespawner_override", {})),
        )

    options = []
    for name, written in (entry.get("profile_options") or {}).items():
        unlisted = written.get("unlisted_choice") or {}
        options.append(
            ProfileOption(
                name=name,
                display_name=written["display_name"],
                choices=tuple(choice(slug, listed) for slug, listed in written["choices"].items()),
                unlisted=UnlistedChoice(
                    display_name=unlisted.get("display_name", written["display_name"]),
                    display_name_in_choices=unlisted.get("display_name_in_choices", "Other..."),
                    validation_regex=unlisted.get("validation_regex"),
                    validation_regex_error=unlisted.get("validation_regex_error", ""),
                    kubespawner_override=dict(unlisted.get("kubespawner_override", {})),
                )
                if unlisted.get("enabled")
                else None,
            )
        )
    return tuple(options)


def option_problems(entry: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """What a schema-valid entry's ``profile_options`` say that KubeSpawner or gpuslice cannot do,
    each as (path inside the profile, text): unknown or held settings, two defaults, a bad regex."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    for name, written in (entry.get("profile_options") or {}).items():
        base = ("profile_options", name)
        defaults = [slug for slug, choice in written["choices"].items() if choice.get("default")]
        if len(defaults) > 1:
            text = f"only one choice may be the default, got {', '.join(defaults)}"
            problems.append(((*base, "choices", defaults[1], "default"), text))
        for slug, choice in written["choices"].items():
            path = (*base, "choices", slug, "kubespawner_override")
            problems += _override_problems(path, choice.get("kubespawner_override", {}))
        unlisted = written.get("unlisted_choice")
        if unlisted:
            problems += _override_problems(
                (*base, "unlisted_choice", "kubespawner_override"), unlisted.get("kubespawner_override", {})
            )
            regex = unlisted.get("validation_regex")
            if regex is not None:
                try:
                    re.compile(regex)
                except re.error as error:
                    text = f"expected a regular expression, got {regex!r} ({error})"
                    problems.append(((*base, "unlisted_choice", "validation_regex"), text))
    return problems


def _override_problems(
    path: tuple[Any, ...], override: Mapping[str, Any]
) -> list[tuple[tuple[Any, ...], str]]:
    problems = []
    settings = kubespawner_settings()
    for name, value in override.items():
        if name in HELD_SETTINGS:
            problems.append(((*path, name), f"{name} cannot be set by an option: {HELD_SETTINGS[name]}"))
        elif name not in settings:
            close = difflib.get_close_matches(name, list(settings), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            text = f"expected a KubeSpawner setting such as image, environment or volumes, got {name!r}{hint}"
            problems.append(((*path, name), text))
        else:
            refusal = settings[name](value)
            if refusal:
                problems.append(((*path, name), refusal))
            elif name == "environment" and isinstance(value, Mapping):
                for variable in sorted(set(value) & set(DEVICE_VARIABLES)):
                    text = f"{variable} cannot be set by an option: {DEVICE_REASON}"
                    problems.append(((*path, name, variable), text))
    return problems


@lru_cache(maxsize=1)
def kubespawner_settings() -> Mapping[str, Any]:
    """KubeSpawner's configurable settings by name, each a function giving why a value is wrong
    ('' when it is right), checked with the setting's own trait.

    Imported here, late, because only a profile with options needs KubeSpawner's class; the
    package is one of gpuslice's dependencies, so the hub and ``gpuslice profiles check`` agree.
    """
    from kubespawner import KubeSpawner
    from traitlets import TraitError

    def checker(name: str, trait: Any):
        def check(value: Any) -> str:
            try:
                trait.validate(_Holder, value)
            except TraitError as error:
                words = str(error).splitlines()[0].replace(f"The '{name}' trait of a _Holder instance ", "")
                return f"{name}: {words}"
            except Exception:  # noqa: BLE001 - a trait that needs a live spawner to check: KubeSpawner checks it at start
                return ""
            return ""

        return check

    return MappingProxyType(
        {name: checker(name, trait) for name, trait in KubeSpawner.class_traits(config=True).items()}
    )


class _Holder:
    """Stands in for the spawner a trait's validation names in its message."""


def _format(setting: Any, value: str) -> Any:
    """``{value}`` replaced in every string of an override, as KubeSpawner's ``recursive_format``."""
    if isinstance(setting, str):
        return setting.replace("{value}", value)
    if isinstance(setting, list):
        return [_format(item, value) for item in setting]
    if isinstance(setting, dict):
        return {key: _format(item, value) for key, item in setting.items()}
    return setting
