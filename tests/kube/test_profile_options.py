"""A profile's KubeSpawner-style ``profile_options``: read and checked with the profiles, shown in
the form under their profile, sent as KubeSpawner names them, applied to the pod before the slice.

The pods here are built by KubeSpawner itself, with a kubeconfig naming no reachable server; the
same options on a real control plane are in test_spawner.py.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
import pytest
import yaml
from harness import free_port
from jupyterhub.objects import Hub, Server

from spawner.config.profile_options import HELD_SETTINGS, OptionRefused, profile_option_overrides
from spawner.config.profiles import ProfileConfigError, load_profiles
from spawner.hub.mixin import SpawnRefused

from .test_units import UNREACHABLE_KUBECONFIG

REPO = Path(__file__).resolve().parents[2]
DEPLOY_PROFILES = REPO / "deploy" / "z2jh" / "profiles"

PROFILES = """
kubernetes:
  pools:
    dev: {backend: mig, node_selector: {gpuslice.io/pool: dev}}
profiles:
  - {slug: cpu, display_name: CPU, default: true}
  - slug: eighth
    display_name: Eighth
    milli_gpu: 125
    gpu_models: [A100-80GB]
    image: example/base:1
    environment: {FROM_PROFILE: "yes"}
    profile_options:
      image:
        display_name: Image
        choices:
          torch:
            display_name: PyTorch
            kubespawner_override: {image: example/torch:2}
          jax:
            display_name: JAX
            default: true
            kubespawner_override:
              image: example/jax:3
              environment: {XLA_FLAGS: --xla_gpu_strict}
        unlisted_choice:
          enabled: true
          display_name: Your image
          validation_regex: '^example/[a-z]+:[0-9]+$'
          validation_regex_error: an example/NAME:TAG image
          kubespawner_override: {image: '{value}'}
      pull:
        display_name: Pull policy
        choices:
          always: {display_name: Always, kubespawner_override: {image_pull_policy: Always}}
          cached: {display_name: If not present, kubespawner_override: {image_pull_policy: IfNotPresent}}
  - slug: cpu-images
    display_name: CPU, image of your choice
    profile_options:
      image:
        display_name: Image
        choices:
          scipy: {display_name: SciPy, kubespawner_override: {image: example/scipy:1}}
          r: {display_name: R, kubespawner_override: {image: example/r:1}}
        unlisted_choice:
          enabled: true
          display_name: Your image
          kubespawner_override: {image: '{value}'}
"""


def write_profiles(directory: Path, text: str = PROFILES) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "p.yaml").write_text(textwrap.dedent(text))
    return directory


@pytest.fixture
def options(tmp_path):
    profile = load_profiles(write_profiles(tmp_path / "profiles")).by_slug["eighth"]
    return profile.options


def test_options_are_read_in_kubespawners_shape(options):
    image, pull = options
    assert (image.name, image.display_name, [choice.slug for choice in image.choices]) == (
        "image",
        "Image",
        ["torch", "jax"],
    )
    assert image.default_choice.slug == "jax", "the choice marked default"
    assert pull.default_choice.slug == "always", "else the first, as KubeSpawner picks it"
    assert image.unlisted is not None and image.unlisted.display_name_in_choices == "Other..."
    assert pull.unlisted is None


def test_user_options_choose_each_options_override(options):
    assert profile_option_overrides(options, {}) == {
        "image": "example/jax:3",
        "environment": {"XLA_FLAGS": "--xla_gpu_strict"},
        "image_pull_policy": "Always",
    }
    chosen = profile_option_overrides(options, {"profile": "eighth", "image": "torch", "pull": "cached"})
    assert chosen == {"image": "example/torch:2", "image_pull_policy": "IfNotPresent"}
    own = profile_option_overrides(options, {"image": "torch", "image--unlisted-choice": "example/mine:7"})
    assert own["image"] == "example/mine:7", (
        "a value of one's own wins over a listed choice, as in KubeSpawner"
    )


@pytest.mark.parametrize(
    ("user_options", "message"),
    [
        ({"image": "tensorflow"}, "There is no Image 'tensorflow'; choose one of: torch, jax"),
        (
            {"image--unlisted-choice": "evil/miner:1"},
            "'evil/miner:1' cannot be the Image: an example/NAME:TAG image",
        ),
        (
            {"pull--unlisted-choice": "Never"},
            "Pull policy takes no value of your own; choose one of: always, cached",
        ),
    ],
)
def test_a_choice_the_profile_does_not_offer_is_refused(options, user_options, message):
    with pytest.raises(OptionRefused) as refused:
        profile_option_overrides(options, user_options)
    assert str(refused.value) == message


def errors_in(directory: Path) -> list[str]:
    with pytest.raises(ProfileConfigError) as error:
        load_profiles(directory)
    return list(error.value.errors)


def test_profiles_check_names_every_bad_option_with_its_line(tmp_path):
    broken = (
        PROFILES.replace(
            "kubespawner_override: {image: example/torch:2}", "kubespawner_override: {imagee: x}"
        )
        .replace("display_name: PyTorch\n", "display_name: PyTorch\n            default: true\n")
        .replace("{image_pull_policy: IfNotPresent}", "{image_pull_policy: 3, mem_limit: 64G}")
        .replace("'^example/[a-z]+:[0-9]+$'", "'(['")
    )
    directory = write_profiles(tmp_path / "profiles", broken)
    problems = errors_in(directory)
    assert all(problem.startswith(f"{directory}/p.yaml:") for problem in problems), problems
    lines = [int(problem.split(":")[1]) for problem in problems]
    assert lines == sorted(lines) and lines[0] > 10, "each names the line of its field"
    located = [problem.split(": ", 1)[1] for problem in problems]
    assert located == [
        "profiles[1].profile_options.image.choices.torch.kubespawner_override.imagee: expected a KubeSpawner "
        "setting such as image, environment or volumes, got 'imagee' (did you mean image?)",
        "profiles[1].profile_options.image.choices.jax.default: only one choice may be the default, "
        "got torch, jax",
        "profiles[1].profile_options.image.unlisted_choice.validation_regex: expected a regular expression, "
        "got '([' (unterminated character set at position 1)",
        "profiles[1].profile_options.pull.choices.cached.kubespawner_override.image_pull_policy: "
        "image_pull_policy: expected a unicode string, not the int 3.",
        "profiles[1].profile_options.pull.choices.cached.kubespawner_override.mem_limit: mem_limit cannot be "
        "set by an option: gpuslice sets it from the profile, whose CPU and memory the quota and the "
        "allocator counted",
    ]


@pytest.mark.parametrize("setting", sorted(HELD_SETTINGS))
def test_no_option_may_set_what_holds_the_slice(tmp_path, setting):
    text = PROFILES.replace("{image_pull_policy: Always}", f"{{{setting}: {{}}}}")
    (problem,) = errors_in(write_profiles(tmp_path / "profiles", text))
    assert f"kubespawner_override.{setting}: {setting} cannot be set by an option: " in problem


@pytest.mark.parametrize("variable", ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"])
def test_no_option_may_choose_the_devices_a_pod_sees(tmp_path, variable):
    text = PROFILES.replace("{XLA_FLAGS: --xla_gpu_strict}", f"{{XLA_FLAGS: x, {variable}: all}}")
    (problem,) = errors_in(write_profiles(tmp_path / "profiles", text))
    assert problem.endswith(
        f"kubespawner_override.environment.{variable}: {variable} cannot be set by an option: the device "
        "plugin chooses the GPUs a pod sees"
    )


def test_the_schema_names_a_malformed_option(tmp_path):
    text = PROFILES.replace("        display_name: Pull policy\n", "").replace(
        "      pull:\n", "      image--unlisted-choice:\n"
    )
    problems = errors_in(write_profiles(tmp_path / "profiles", text))
    named = "profiles[1].profile_options['image--unlisted-choice']"
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        f"{named}: expected an option name of letters, digits, '_' and '-' (e.g. image), "
        "got 'image--unlisted-choice'",
        f"{named}: missing field 'display_name'; expected a non-empty name for the form",
    ]


def test_the_deploys_example_loads_beside_the_shipped_profiles(tmp_path):
    profile = load_profiles(merged_profiles(tmp_path)).by_slug["a100-1-8-images"]
    (image,) = profile.options
    assert [choice.slug for choice in image.choices] == ["pytorch", "tensorflow", "gpuslice"]
    own = profile_option_overrides(
        profile.options, {"image--unlisted-choice": "quay.io/jupyter/r-notebook:2026-08-24"}
    )
    assert own == {"image": "quay.io/jupyter/r-notebook:2026-08-24"}


# -- the spawner ----------------------------------------------------------------------------------


@pytest.fixture
def make_spawner(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    from kubernetes_asyncio.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    profiles = write_profiles(tmp_path / "profiles")
    from spawner.hub.kube import KubeGPUSpawner

    user = SimpleNamespace(
        name="ada",
        id=3,
        admin=False,
        groups=[],
        url="/user/ada/",
        base_url="/",
        escaped_name="ada",
        server=Server(base_url="/user/ada/"),
        spawners={},
    )

    def make(**user_options):
        made = KubeGPUSpawner(
            hub=Hub(),
            user=user,
            api_token="t",
            oauth_client_id="c",
            _mock=True,
            profiles_dir=str(profiles),
            # Nothing listens there: the form says the service is unavailable, as a hub would.
            service_url=f"http://127.0.0.1:{free_port()}/services/gpuslice/",
            service_api_token="unused",
        )
        made.user_options = user_options
        return made

    # KubeSpawner loads the kubeconfig once per process (an lru_cache): this one names no server,
    # so the later tests' spawners must load theirs again.
    from kubespawner.clients import load_config

    load_config.cache_clear()
    yield make
    load_config.cache_clear()


async def pod_of(spawner, profile_slug: str):
    profile = (await spawner.load_profile_set()).by_slug[profile_slug]
    spawner.apply_profile(profile)
    spawner.lease_id = "server-1"
    return await spawner.get_pod_manifest()


def validate(pod) -> None:
    from spawner.enforce.kube_objects import to_json

    manifest = to_json(pod)
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", **manifest}, "1.37.0", strict=True)


def test_the_chosen_options_reach_the_pod_and_the_slice_still_wins(make_spawner):
    async def main():
        spawner = make_spawner(profile="eighth", image="jax", pull="cached")
        first = await pod_of(spawner, "eighth")
        # The same spawner started again with other choices: nothing of the last ones is kept.
        spawner.user_options = {"profile": "eighth", "image": "torch"}
        second = await pod_of(spawner, "eighth")
        spawner.user_options = {"profile": "cpu"}
        third = await pod_of(spawner, "cpu")
        return first, second, third

    first, second, third = asyncio.run(main())
    container = first.spec.containers[0]
    assert (container.image, container.image_pull_policy) == ("example/jax:3", "IfNotPresent")
    env = {item.name: item.value for item in container.env}
    assert env["XLA_FLAGS"] == "--xla_gpu_strict" and env["FROM_PROFILE"] == "yes", (
        "merged, as KubeSpawner merges"
    )
    assert container.resources.limits["nvidia.com/mig-1g.10gb"] == "1"
    assert first.spec.node_selector == {"gpuslice.io/pool": "dev"}
    validate(first)

    container = second.spec.containers[0]
    assert (container.image, container.image_pull_policy) == ("example/torch:2", "Always")
    assert "XLA_FLAGS" not in {item.name for item in container.env}, "the last start's option is undone"
    validate(second)
    assert third.spec.containers[0].image == "quay.io/jupyter/base-notebook:latest"
    assert "nvidia.com/mig-1g.10gb" not in (third.spec.containers[0].resources.limits or {})


def test_an_unknown_choice_is_refused_before_any_slice_is_asked_for(make_spawner):
    async def main():
        spawner = make_spawner(profile="eighth", image="tensorflow")
        with pytest.raises(SpawnRefused) as refused:
            await spawner.start()
        return spawner, refused

    spawner, refused = asyncio.run(main())
    assert refused.value.status_code == 400
    assert (
        refused.value.jupyterhub_message
        == "Eighth: There is no Image 'tensorflow'; choose one of: torch, jax."
    )
    assert spawner.lease_id == ""


class FormFields(HTMLParser):
    """The form's select fields, their options, and the text fields (name -> placeholder)."""

    def __init__(self):
        super().__init__()
        self.selects: dict[str, list[tuple[str, bool]]] = {}
        self.texts: dict[str, str] = {}
        self.blocks: list[str] = []
        self._select = ""

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "select":
            self._select = attributes["name"]
            self.selects[self._select] = []
        elif tag == "option":
            self.selects[self._select].append((attributes["value"], "selected" in attributes))
        elif tag == "input" and attributes.get("type") == "text":
            self.texts[attributes["name"]] = attributes.get("placeholder", "")
        elif tag == "fieldset":
            self.blocks.append(attributes["data-profile"])


def test_the_form_shows_each_profiles_options_under_kubespawners_field_names(make_spawner):
    async def main():
        return await make_spawner().render_options_form()

    html = asyncio.run(main())
    fields = FormFields()
    fields.feed(html)
    assert fields.blocks == ["eighth", "cpu-images"], "only profiles with options get a block"
    assert [value for value, _ in fields.selects["profile"]] == ["cpu", "eighth", "cpu-images"]
    assert fields.selects["profile-option-eighth--image"] == [
        ("torch", False),
        ("jax", True),
        ("--unlisted-choice", False),
    ]
    assert fields.selects["profile-option-eighth--pull"] == [("always", True), ("cached", False)]
    assert fields.texts == {
        "profile-option-eighth--image--unlisted-choice": "Your image",
        "profile-option-cpu-images--image--unlisted-choice": "Your image",
    }


def test_the_form_sends_the_chosen_profiles_options_as_kubespawner_names_them(make_spawner):
    async def made():
        return make_spawner()

    spawner = asyncio.run(made())
    formdata = {
        "profile": ["eighth"],
        "profile-option-eighth--image": ["--unlisted-choice"],
        "profile-option-eighth--image--unlisted-choice": ["example/mine:7"],
        "profile-option-eighth--pull": ["cached"],
        "profile-option-other--image": ["torch"],
    }
    assert spawner.options_from_form(formdata) == {
        "profile": "eighth",
        "image--unlisted-choice": "example/mine:7",
        "pull": "cached",
    }
    formdata["profile-option-eighth--image"] = ["torch"]
    formdata["profile-option-eighth--image--unlisted-choice"] = [""]
    assert spawner.options_from_form(formdata) == {"profile": "eighth", "image": "torch", "pull": "cached"}
    assert spawner.options_from_form({"profile": ["cpu"], "profile-option-eighth--image": ["jax"]}) == {
        "profile": "cpu"
    }


# -- gpuslice k8s render --option ------------------------------------------------------------------


def merged_profiles(tmp_path: Path) -> Path:
    """The shipped profiles and the deploy's example, in one directory as the deploy's ConfigMap."""
    directory = tmp_path / "merged"
    directory.mkdir()
    for source in [*(REPO / "profiles").glob("*.yaml"), *DEPLOY_PROFILES.glob("*.yaml")]:
        if not source.name.startswith("gpus"):
            shutil.copy(source, directory / source.name)
    return directory


@pytest.mark.parametrize(
    ("chosen", "image"),
    [
        ([], "quay.io/jupyter/pytorch-notebook:cuda12-2026-08-24"),
        (["--option", "image=tensorflow"], "quay.io/jupyter/tensorflow-notebook:cuda-2026-08-24"),
        (
            ["--option", "image--unlisted-choice=quay.io/jupyter/r-notebook:2026-08-24"],
            "quay.io/jupyter/r-notebook:2026-08-24",
        ),
    ],
)
def test_render_shows_the_pod_of_a_profile_option_and_it_validates(tmp_path, capsys, chosen, image):
    from .test_manifests import run_cli

    directory = merged_profiles(tmp_path)
    code, out, err = run_cli(
        "k8s",
        "render",
        "--profile",
        "a100-1-8-images",
        "--user",
        "ada",
        *chosen,
        str(directory),
        capsys=capsys,
    )
    assert (code, err) == (0, "")
    pod = yaml.safe_load(out)
    kubernetes_validate.validate(pod, "1.37.0", strict=True)
    assert pod["spec"]["containers"][0]["image"] == image


@pytest.mark.parametrize(
    ("chosen", "message"),
    [
        ("image=nope", "There is no Image 'nope'; choose one of: pytorch, tensorflow, gpuslice"),
        ("imag=x", "profile a100-1-8-images has no option 'imag'; its options: image"),
        ("image", "--option takes NAME=CHOICE (or NAME--unlisted-choice=VALUE), got 'image'"),
    ],
)
def test_render_refuses_an_option_the_profile_does_not_offer(tmp_path, capsys, chosen, message):
    from .test_manifests import run_cli

    directory = merged_profiles(tmp_path)
    code, out, err = run_cli(
        "k8s",
        "render",
        "--profile",
        "a100-1-8-images",
        "--user",
        "ada",
        "--option",
        chosen,
        str(directory),
        capsys=capsys,
    )
    assert (code, out, err) == (2, "", f"gpuslice k8s render: {message}\n")


# -- the form in a real browser --------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


def test_a_browser_shows_and_sends_only_the_chosen_profiles_options(make_spawner):
    """Debian's Chromium (never a downloaded one) runs the form's own script: the options of the
    profile chosen are shown and sent, "Other..." opens the free-text field, and the fields sent
    become the user_options KubeSpawner would read."""
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing; install Debian's chromium (`make test` does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

    async def render():
        spawner = make_spawner()
        return spawner, await spawner.render_options_form()

    spawner, html = asyncio.run(render())
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.set_content(f'<form id="spawn">{html}</form>')

            def sent() -> dict[str, list[str]]:
                entries = page.evaluate(
                    "Array.from(new FormData(document.getElementById('spawn')).entries())"
                )
                formdata: dict[str, list[str]] = {}
                for name, value in entries:
                    formdata.setdefault(name, []).append(value)
                return formdata

            options = page.locator("fieldset[data-profile=cpu-images]")
            free_text = page.locator("[name='profile-option-cpu-images--image--unlisted-choice']")
            # The CPU profile is preselected (the default): no options shown, none sent. (The GPU
            # profile cannot be chosen here: no gpuslice service answers, so it is disabled.)
            assert not options.is_visible()
            assert not page.locator("fieldset[data-profile=eighth]").is_visible()
            assert sent() == {"profile": ["cpu"]}

            page.select_option("#gpuslice-profile", "cpu-images")
            assert options.is_visible() and not free_text.is_visible()
            assert spawner.options_from_form(sent()) == {"profile": "cpu-images", "image": "scipy"}
            page.select_option("[name='profile-option-cpu-images--image']", "r")
            assert spawner.options_from_form(sent()) == {"profile": "cpu-images", "image": "r"}

            page.select_option("[name='profile-option-cpu-images--image']", "--unlisted-choice")
            assert free_text.is_visible()
            free_text.fill("example/mine:7")
            assert spawner.options_from_form(sent()) == {
                "profile": "cpu-images",
                "image--unlisted-choice": "example/mine:7",
            }
            assert not page.locator("fieldset[data-profile=eighth]").is_visible(), "one block at a time"

            page.select_option("#gpuslice-profile", "cpu")
            assert not options.is_visible() and sent() == {"profile": ["cpu"]}
        finally:
            browser.close()
