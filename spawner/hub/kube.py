"""``KubeGPUSpawner``: KubeSpawner with gpuslice's profiles, quotas and lease, for zero-to-jupyterhub.

The dropdown, the quota check and the lease are the mixin's (:mod:`.mixin`), exactly as for local
servers: the gpuslice service grants the slice, then the pod is made to hold it. How the pod holds
it depends on the pool's back-end in the profiles' ``kubernetes:`` mapping (MIG resource, shared
replicas, HAMi limits, a KAI annotation, or a pinned node and GPU), built by the pure
:func:`spawner.enforce.kube_objects.pod_slice` that ``gpuslice k8s render`` prints too.

A profile may offer KubeSpawner-style ``profile_options`` (a choice of image, say;
:mod:`spawner.config.profile_options`): the form shows those of the chosen profile under
KubeSpawner's field names, and the chosen override is applied after the profile and before the
slice, so no option can change what holds the slice.

The lease lives as long as the pod: taken before the pod is created, given back when the server
stops, when the start fails, and when ``poll`` finds the pod gone (evicted, its node deleted), and
kept in the hub's state with the pod's name so a hub restart finds both again.
"""

from __future__ import annotations

import copy
import dataclasses
from importlib import resources
from typing import Any

import jinja2
from kubespawner import KubeSpawner
from kubespawner.utils import recursive_update
from traitlets import Unicode, default

from spawner.config.kube_backends import BACKEND_CAVEATS
from spawner.config.profile_options import UNLISTED_SUFFIX, OptionRefused, profile_option_overrides
from spawner.config.profiles import Profile
from spawner.enforce.kube_objects import PodSlice, pod_slice, server_labels

from .mixin import GPUSliceSpawnerMixin, SpawnRefused

HOST_ONLY_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_LOG_DIRECTORY",
    "JUPYTER_PATH",
)
"""Variables that name the hub machine's devices, daemons and files. In a pod the device plugin
decides which device the container sees (and numbers it from 0), so a host UUID or an MPS pipe
there would hide the GPU the pod was given; JUPYTER_PATH would name the hub's install of this
package, while the notebook image sets its own (images/notebook/Dockerfile). The memory-share
variables (XLA, TensorFlow, PyTorch) stay."""
MPS_LIMIT_PREFIX = "CUDA_MPS_"
OPTIONS_TEMPLATE = "profile_options.html"
OPTION_FIELD_PREFIX = "profile-option-"
"""KubeSpawner's form field names for a profile's options: ``profile-option-<profile>--<option>``."""
UNLISTED_VALUE = "--unlisted-choice"
"""The value of the "Other..." entry of an option's list: the free-text field then holds the choice."""


class KubeGPUSpawner(GPUSliceSpawnerMixin, KubeSpawner):
    """A notebook pod per server, holding a gpuslice lease on a GPU slice of the cluster."""

    @default("slug_scheme")
    def _default_slug_scheme(self) -> str:
        # DESIGN.md: pod names and labels are escaped with escapism, as KubeSpawner's "escape"
        # scheme does; spawner.enforce.kube_objects escapes its own labels the same way.
        return "escape"

    image_default = Unicode(
        "quay.io/jupyter/base-notebook:latest",
        help="""
        The image of a profile that names none (a profile's `image:` wins). The images/notebook
        Dockerfile builds one with CUDA, gpuslice and the %%submit magic loaded in every kernel.
        """,
    ).tag(config=True)

    granted_lease: dict[str, Any] | None = None
    """The lease of the running start as the service returned it (node, shares, model)."""

    pod_slice_applied: PodSlice | None = None

    async def _allocate_waiting_for_reclaim(self, client, profile: Profile) -> dict[str, Any]:
        # Keep the grant itself: the pinned back-end needs its node and GPU UUIDs for the pod.
        self.granted_lease = await super()._allocate_waiting_for_reclaim(client, profile)
        return self.granted_lease

    async def visible_profiles(self) -> tuple[list[Profile], Profile | None]:
        """The mixin's choices, each GPU profile telling what its back-end does not enforce.

        Under time-slicing (``shared``) and KAI without its isolator, a slice's memory is a promise
        other servers on the card can break: the person choosing should read that in the form.
        """
        visible, preselected = await super().visible_profiles()
        profile_set = await self.load_profile_set()
        told = []
        for profile in visible:
            caveat = BACKEND_CAVEATS.get(profile_set.kubernetes.for_pool(profile.pool).backend)
            if profile.has_gpu and caveat:
                description = f"{profile.description} {caveat}".strip()
                profile = dataclasses.replace(profile, description=description)
            told.append(profile)
        chosen = next((profile for profile in told if preselected and profile.slug == preselected.slug), None)
        return told, chosen

    def apply_profile(self, profile: Profile) -> None:
        """The profile, then the override of each of its ``profile_options`` as ``user_options``
        chose it (KubeSpawner's names: ``{"image": "pytorch"}``); the slice comes later, in
        :meth:`get_pod_manifest`, so it always wins. A choice the profile does not offer is refused
        before any slice is taken."""
        self._restore_option_settings()
        super().apply_profile(profile)
        self.image = profile.image or self.image_default
        self._gpuslice_profile = profile
        self._configured_placement()  # the admin's placement settings, read before any option
        try:
            overrides = profile_option_overrides(profile.options, self.user_options or {})
        except OptionRefused as error:
            raise SpawnRefused(400, f"{profile.display_name}: {error}.", reason="profile") from None
        self._apply_option_overrides(overrides)

    def _apply_option_overrides(self, overrides: dict[str, Any]) -> None:
        """Set each overridden setting as KubeSpawner does (a mapping is merged into the current
        one, anything else replaces it), keeping what it was so the next start begins from it."""
        saved = self._option_settings_saved()
        for name, value in overrides.items():
            current = getattr(self, name)
            saved.setdefault(name, copy.deepcopy(current))
            if isinstance(value, dict) and isinstance(current, dict):
                merged = copy.deepcopy(current)
                recursive_update(merged, copy.deepcopy(value))
                setattr(self, name, merged)
            else:
                setattr(self, name, copy.deepcopy(value))
            self.log.debug("gpuslice: %s set by a profile option of %s", name, self._log_name)

    def _restore_option_settings(self) -> None:
        """The settings the last start's options changed, back to what they were before it: a
        restart with other choices must not keep the last ones (a spawner lives across starts)."""
        saved = self._option_settings_saved()
        for name, value in saved.items():
            setattr(self, name, copy.deepcopy(value))
        saved.clear()

    def _option_settings_saved(self) -> dict[str, Any]:
        if not hasattr(self, "_gpuslice_option_settings"):
            self._gpuslice_option_settings: dict[str, Any] = {}
        return self._gpuslice_option_settings

    async def render_options_form(self) -> str:
        """The mixin's dropdown, then the ``profile_options`` of the profiles that have some, each
        shown while its profile is the one chosen (as KubeSpawner's own form shows them)."""
        form = await super().render_options_form()
        visible, _ = await self.visible_profiles()
        with_options = [profile for profile in visible if profile.options]
        if not with_options:
            return form
        return form + _options_template().render(
            profiles=with_options, unlisted_value=UNLISTED_VALUE, unlisted_suffix=UNLISTED_SUFFIX
        )

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, str]:
        """``{"profile": slug}`` plus the chosen profile's options, named as KubeSpawner names them
        in ``user_options`` (``image``, or ``image--unlisted-choice`` for a value of one's own).

        Fields of other profiles are dropped; the choices are checked against the profile at start.
        """
        user_options = super().options_from_form(formdata)
        prefix = f"{OPTION_FIELD_PREFIX}{user_options.get('profile', '')}--"
        for field, values in formdata.items():
            value = (values or [""])[0].strip()
            if not user_options.get("profile") or not field.startswith(prefix) or not value:
                continue
            if value == UNLISTED_VALUE:
                continue  # "Other...": the free-text field beside it holds the choice
            user_options[field[len(prefix) :]] = value
        return user_options

    async def load_user_options(self) -> None:
        """Nothing more to load: the mixin's ``start`` applied the gpuslice profile named by
        ``user_options["profile"]`` (image, CPU, memory, the slice) before KubeSpawner's start.

        KubeSpawner reads the same option as a slug of its own ``profile_list``, which gpuslice's
        profiles replace; consulting it would refuse every gpuslice slug as unknown. The profile's
        ``profile_options`` are gpuslice's too, applied by :meth:`apply_profile`.
        """
        return None

    async def get_pod_manifest(self):
        """KubeSpawner's pod, plus what holds the slice on the profile's pool back-end."""
        profile: Profile | None = getattr(self, "_gpuslice_profile", None)
        if profile is not None:
            profile_set = await self.load_profile_set()
            pool = profile_set.kubernetes.for_pool(profile.pool)
            try:
                held = pod_slice(profile, pool, self.granted_lease)
            except ValueError as error:
                text = f"{profile.display_name} cannot start on this cluster: {error}"
                raise SpawnRefused(400, text, reason="profile") from None
            self.pod_slice_applied = held
            configured = self._configured_placement()
            lease_id = self.lease_id if profile.has_gpu else ""
            self.extra_resource_limits = {**configured["extra_resource_limits"], **held.limits}
            self.extra_annotations = {**configured["extra_annotations"], **held.annotations}
            self.extra_labels = {
                **configured["extra_labels"],
                **server_labels(self.user.name, self.name, profile.slug, lease_id),
                **held.labels,
            }
            self.node_selector = {**configured["node_selector"], **held.node_selector}
            self.tolerations = [*configured["tolerations"], *held.tolerations]
            self.scheduler_name = held.scheduler_name or configured["scheduler_name"]
        return await super().get_pod_manifest()

    def _configured_placement(self) -> dict[str, Any]:
        """The admin's own settings of what a slice changes, read once, so that a second start of
        the same spawner adds its slice to them rather than to the last start's."""
        if not hasattr(self, "_gpuslice_configured"):
            self._gpuslice_configured = {
                "extra_resource_limits": dict(self.extra_resource_limits),
                "extra_annotations": dict(self.extra_annotations),
                "extra_labels": dict(self.extra_labels),
                "node_selector": dict(self.node_selector),
                "tolerations": list(self.tolerations),
                "scheduler_name": self.scheduler_name,
            }
        return self._gpuslice_configured

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        held = self.pod_slice_applied
        if held is not None:
            for name in HOST_ONLY_VARIABLES:
                env.pop(name, None)
            for name in [name for name in env if name.startswith(MPS_LIMIT_PREFIX)]:
                env.pop(name)
            env.update(held.environment)
        return env

    def clear_state(self) -> None:
        super().clear_state()
        self.granted_lease = None
        self.pod_slice_applied = None


def _options_template() -> jinja2.Template:
    source = resources.files("spawner.hub").joinpath("templates", OPTIONS_TEMPLATE).read_text()
    return jinja2.Environment(autoescape=True).from_string(source)
