"""Versioned adapter names (a version matrix): ``lightning@2.1.4`` beside ``lightning``.

Fast tests use a test-only adapter, ``six-native`` (tests/plugins: the native loop with ``six``
as its library; the main environment has six 1.17.0), run as ``six-native@1.16.0`` in an
isolated environment built once per module in a temporary folder (~3-10 s) and one runner run
in it (~10-15 s). The real Lightning variant (``lightning@2.1.4``: a ~4-7 s build, three
workers) is ``slow`` (``make test-deep``).
"""

from __future__ import annotations

import json

import pytest

from adapters.base import Request
from adapters.lightning import LightningAdapter
from harness import envs
from harness.cli import main
from harness.parity import compare_files
from harness.registry import (
    LibraryVersionMismatch,
    RegistryError,
    get_adapter,
    get_task,
    imported_library,
    variant_info,
)
from harness.runner import RunOptions, run_spec
from harness.spec import Spec, SpecError, split_adapter
from harness.suites import load_suite_file

MAIN_SIX = "1.17.0"
PINNED_SIX = "1.16.0"
VARIANT = f"six-native@{PINNED_SIX}"
FIELDS = {"task": "scaling", "steps": 4, "lr": 0.05, "batch_size": 16}

BAD_NAMES = [
    ("lightning@", "a version must follow '@'"),
    ("lightning@../x", "not a PEP 440 version"),
    ("lightning@2.1.4/..", "not a PEP 440 version"),
    ("lightning@v2.1.4", "not a PEP 440 version"),
    ("lightning@2.1.4 ", "not a PEP 440 version"),
    ("lightning@2.1.4\n", "not a PEP 440 version"),
    ("lightning@2.01", "not a PEP 440 version"),
    ("lightning@1!2.0", "not a PEP 440 version"),
    ("lightning@2.1@2.2", "not a PEP 440 version"),
    ("lightning@2.1;rm -rf", "not a PEP 440 version"),
    ("@2.1.4", "an adapter name"),
    ("../x@2.1.4", "an adapter name"),
]


def test_six_is_really_different_in_the_main_environment():
    import six

    assert six.__version__ == MAIN_SIX != PINNED_SIX  # otherwise the variant tests prove nothing


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lightning", ("lightning", None)),
        ("lightning@2.1.4", ("lightning", "2.1.4")),
        ("lightning@2.0.9.post0", ("lightning", "2.0.9.post0")),
        ("lightning@2.3.0rc1", ("lightning", "2.3.0rc1")),
        ("fault-raise", ("fault-raise", None)),
    ],
)
def test_versioned_names_split(name, expected):
    assert split_adapter(name) == expected


@pytest.mark.parametrize(("name", "message"), BAD_NAMES)
def test_malformed_versioned_names_are_refused_by_the_spec(name, message):
    with pytest.raises(SpecError, match=message):
        Spec(adapter=name, **FIELDS)


def test_the_version_is_part_of_the_spec_id_and_label():
    names = ("lightning", "lightning@2.1.4", "lightning@2.2.5")
    plain, pinned, other = (Spec(adapter=name, **FIELDS) for name in names)
    assert len({plain.spec_id, pinned.spec_id, other.spec_id}) == 3
    assert "lightning@2.1.4" in pinned.label.split()
    assert Spec.from_dict(json.loads(pinned.canonical_json())) == pinned


def test_a_versioned_name_is_the_same_adapter_in_its_own_environment():
    plain, pinned = get_adapter("lightning"), get_adapter("lightning@2.1.4")
    assert isinstance(pinned, LightningAdapter) and type(pinned).__mro__[1] is LightningAdapter
    assert plain.environment is None and plain.name == "lightning"  # unversioned: unchanged
    assert pinned.name == pinned.environment == "lightning@2.1.4"
    assert (pinned.style, pinned.library, pinned.modes, pinned.precisions) == (
        plain.style,
        plain.library,
        plain.modes,
        plain.precisions,
    )
    for mode in ("aligned", "defaults"):
        assert pinned.expected_parity(
            Request(task=get_task("digits"), mode=mode, precision="fp32", world_size=1, grad_accum=1)
        ) == (
            plain.expected_parity(
                Request(task=get_task("digits"), mode=mode, precision="fp32", world_size=1, grad_accum=1)
            )
        )
    assert envs.declared_environment("lightning@2.1.4") == "lightning@2.1.4"
    assert variant_info("lightning") is None
    assert variant_info("lightning@2.1.4")["library"] == "lightning"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("native@1.0", "adapter 'native' has no library to pin"),
        ("nope@1.0", "unknown adapter 'nope'"),
        ("lightning@", "a version must follow '@'"),
    ],
)
def test_the_registry_refuses_what_cannot_be_pinned(name, message):
    with pytest.raises(RegistryError, match=message):
        get_adapter(name)
    assert envs.declared_environment(name) is None  # the runner never builds anything for it


def test_variant_environments_pin_the_library_and_add_declared_extras(tmp_path):
    old, new = envs.environment_spec("lightning@2.1.4"), envs.environment_spec("lightning@2.4.0")
    assert old.requirements == ("lightning==2.1.4", "setuptools<81")  # Lightning < 2.4 needs pkg_resources
    assert new.requirements == ("lightning==2.4.0",)
    assert old.name == "lightning@2.1.4" and old.share_main and old.key != new.key
    assert old.path.name == f"lightning@2.1.4-{old.key}"
    # An adapter with an environment of its own keeps its pins, with the library re-pinned.
    flash = envs.environment_spec("flash@0.8.1")
    assert flash.requirements[0] == "lightning-flash==0.8.1"
    assert "lightning-flash==0.8.2" not in flash.requirements and "numpy<2" in flash.requirements
    # An optional envs/<adapter>@<version>.txt adds pins; it cannot re-pin the library itself.
    (tmp_path / "lightning@2.2.5.txt").write_text("lightning==2.6.6  # ignored: the name decides\nrich<14\n")
    extra = envs.environment_spec("lightning@2.2.5", tmp_path)
    assert extra.requirements == ("lightning==2.2.5", "setuptools<81", "rich<14")
    assert envs.variant_requirements({"<2.4": ("a",), ">=2.2": ("b",)}, "2.3.0rc1") == ["a", "b"]
    with pytest.raises(envs.EnvironmentBuildError, match="no library to pin"):
        envs.environment_spec("native@1.0")


def test_imported_library_checks_what_this_interpreter_imports():
    record = imported_library("six", MAIN_SIX)
    assert record["distribution_version"] == MAIN_SIX
    assert record["modules"]["six"]["version"] == MAIN_SIX
    with pytest.raises(LibraryVersionMismatch, match=f"asked for six=={PINNED_SIX}.*metadata says {MAIN_SIX}"):
        imported_library("six", PINNED_SIX)
    with pytest.raises(LibraryVersionMismatch, match="not installed"):
        imported_library("no-such-distribution-here", "1.0")


# --- the CLI and suite files ---------------------------------------------------------------------


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ("lightning@", "a version must follow '@'"),
        ("lightning@../x", "not a PEP 440 version"),
        ("native@1.0", "adapter 'native' has no library to pin"),
        ("nope@2.0", "unknown adapter 'nope'"),
    ],
)
def test_bad_variants_on_the_command_line_exit_2_and_write_nothing(capsys, tmp_path, monkeypatch, adapter, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(envs, "BUILD_ROOT", tmp_path / "envs-built")
    results = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", "--task", "digits", "--adapter", adapter, "--results-dir", str(results))
    assert code == 2 and err.startswith("bakeoff: error: ") and message in err and err.count("\n") == 1
    assert not results.exists() and not (tmp_path / "envs-built").exists()


SUITE = """
name = "versions"
[[runs]]
task = "digits"
adapter = ["native", "lightning", "lightning@2.1.4"]
steps = 8
"""


def test_a_suite_file_runs_both_versions_side_by_side(capsys, tmp_path):
    path = tmp_path / "versions.toml"
    path.write_text(SUITE)
    suite = load_suite_file(path, "cpu")
    assert [spec.adapter for spec in suite.specs] == ["native", "lightning", "lightning@2.1.4"]
    assert len({spec.spec_id for spec in suite.specs}) == 3
    code, out, _ = run_cli(capsys, "bench", "--suite-file", str(path), "--dry-run", "--device", "cpu")
    assert code == 0 and "digits lightning aligned" in out and "digits lightning@2.1.4 aligned" in out
    path.write_text(SUITE.replace('"lightning@2.1.4"', '"lightning@../2.1"'))
    results = tmp_path / "out"
    code, _, err = run_cli(capsys, "bench", "--suite-file", str(path), "--results-dir", str(results), "--no-tracking")
    assert code == 2 and "not a PEP 440 version" in err and err.count("\n") == 1
    assert not results.exists()


# --- a variant really runs in its environment (six-native@1.16.0) --------------------------------


def test_a_variant_runs_in_its_environment_with_the_pinned_library(plugin_env, envs_build_root, inline, tmp_path):
    spec = Spec(adapter=VARIANT, **FIELDS)
    environment = envs.environment_spec(VARIANT)
    assert environment.requirements == (f"six=={PINNED_SIX}",)  # "<1.16" extras do not apply
    main_run = inline(Spec(adapter="six-native", **FIELDS))
    assert main_run["status"] == "ok" and main_run["adapter"]["library_version"] == MAIN_SIX
    assert "isolated" not in main_run["environment"]  # the plain name runs in the main environment

    result = run_spec(spec, RunOptions(results_dir=tmp_path / "variant", timeout_s=300))
    assert result["status"] == "ok", (result.get("error"), result.get("output_tail"))
    built = envs.load(environment)
    assert built is not None and built.path.parent == envs_build_root
    isolated = result["environment"]["isolated"]
    assert isolated["name"] == VARIANT and isolated["key"] == environment.key
    assert {"name": "six", "version": PINNED_SIX, "origin": "own"} in isolated["packages"]
    assert result["environment"]["executable"].startswith(str(built.path))
    assert result["adapter"]["name"] == VARIANT and result["adapter"]["library_version"] == PINNED_SIX
    assert result["adapter"]["variant_of"] == "six-native" and result["adapter"]["requested_version"] == PINNED_SIX
    imported = result["notes"]["library_variant"]
    assert imported["requested"] == imported["distribution_version"] == PINNED_SIX
    assert imported["modules"]["six"]["file"].startswith(str(built.site_packages))
    # Same code, task, sampler, initial weights and probe: six's version changes none of the math.
    assert result["weights_digest"] == main_run["weights_digest"]
    assert result["trajectory"]["losses"] == main_run["trajectory"]["losses"]
    assert compare_files(main_run, result, tmp_path).verdict == "bitwise"
    assert Spec(adapter="six-native", **FIELDS).spec_id != spec.spec_id


def test_a_variant_that_imports_another_version_fails_instead_of_mislabelling(plugin_env, inline):
    """In the main environment (six 1.17.0) six-native@1.16.0 must fail before its first step."""
    result = inline(Spec(adapter=VARIANT, **FIELDS))
    assert result["status"] == "failed"
    assert "LibraryVersionMismatch" in result["error"] and f"metadata says {MAIN_SIX}" in result["error"]
    assert not result.get("trajectory", {}).get("losses")


# --- slow: the real Lightning variant (`make test-deep`) -----------------------------------------

OLD_LIGHTNING = "2.1.4"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_an_older_lightning_is_bitwise_native_in_aligned_mode(tmp_path, precision):
    """lightning@2.1.4 (environment built or reused under .envs/) vs native vs the main Lightning."""
    fields = {"task": "digits", "precision": precision, "steps": 8, "lr": 0.05, "batch_size": 16}
    options = RunOptions(results_dir=tmp_path, timeout_s=600)
    names = ("native", f"lightning@{OLD_LIGHTNING}")
    results = {name: run_spec(Spec(adapter=name, **fields), options) for name in names}
    for name, result in results.items():
        assert result["status"] == "ok", (name, result.get("error"), result.get("output_tail"))
    old = results[f"lightning@{OLD_LIGHTNING}"]
    assert old["adapter"]["library_version"] == OLD_LIGHTNING
    assert old["notes"]["library_variant"]["modules"]["lightning"]["version"] == OLD_LIGHTNING
    assert old["environment"]["isolated"]["requirements"] == [f"lightning=={OLD_LIGHTNING}", "setuptools<81"]
    own = {p["name"] for p in old["environment"]["isolated"]["packages"] if p["origin"] == "own"}
    assert "torch" not in own and "lightning" in own  # torch is the main environment's
    verdict = compare_files(results["native"], old, tmp_path)
    assert verdict.verdict == "bitwise", verdict.describe()
    if precision == "bf16-mixed":
        assert "bfloat16" in old["notes"]["precision_impl"]
