"""Isolated worker environments (harness/envs.py) and the Flash adapter that runs in one.

The mechanism is tested with a small environment, ``envs/pin-check.txt`` (six pinned at 1.16.0;
the main environment has 1.17.0), built fresh in a temporary folder once per module (~15-20 s,
pip reaches PyPI). One spec runs through the runner in it (~15 s). The Flash environment build
and Flash's parity runs are ``slow`` (``make test-deep``): ~70 s to build, ~60 s per run here.
"""

from __future__ import annotations

import json
import subprocess
import sysconfig
import warnings
from pathlib import Path

import pytest

from adapters.base import Request
from adapters.flash import PRETRAINED_FALLBACK, FlashAdapter, pretrained_fallbacks
from adapters.native import NativeAdapter
from harness import envs
from harness.parity import compare_files
from harness.registry import get_adapter, get_task
from harness.runner import RunOptions, run_spec
from harness.spec import Spec
from reports.inference import INFERENCE_TABLE, inference_table, markdown

MAIN_SITE_PACKAGES = sysconfig.get_paths()["purelib"]


def interpreter_says(python: Path, code: str) -> str:
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def pin_check(envs_build_root):
    """A fresh build of envs/pin-check.txt, with the main site-packages listed before and after."""
    before = envs.site_listing(MAIN_SITE_PACKAGES)
    built = envs.ensure_built(envs.load_spec("pin-check"))
    return built, before


def test_requirements_file_parses_and_the_key_follows_the_pins(tmp_path):
    (tmp_path / "a.txt").write_text("# comment\nsix==1.16.0  # pinned\n\n")
    (tmp_path / "b.txt").write_text("six==1.15.0\n")
    (tmp_path / "c.txt").write_text(f"{envs.ISOLATED_MARKER}\nsix==1.16.0\n")
    a, b, c = (envs.load_spec(name, tmp_path) for name in "abc")
    assert a.requirements == ("six==1.16.0",)
    assert a.share_main and a.shared_site_packages == MAIN_SITE_PACKAGES
    assert a.key != b.key  # another pin, another environment
    assert not c.share_main and c.shared_site_packages == "" and c.key != a.key
    assert envs.load_spec("a", tmp_path).key == a.key  # stable across reads
    with pytest.raises(envs.EnvironmentBuildError, match="no requirements file"):
        envs.load_spec("missing", tmp_path)
    with pytest.raises(ValueError, match="environment name"):
        envs.EnvironmentSpec(name="../escape", requirements=())


def test_own_pin_wins_and_torch_is_shared_not_copied(pin_check):
    built, _ = pin_check
    own = str(built.site_packages)
    version, six_file, torch_file = interpreter_says(
        built.python, "import six, torch; print(six.__version__); print(six.__file__); print(torch.__file__)"
    ).splitlines()
    assert version == "1.16.0" and six_file.startswith(own)
    assert torch_file.startswith(MAIN_SITE_PACKAGES)  # the main environment's torch, not a copy
    import six

    assert six.__version__ != "1.16.0"  # the pin really differs from the main environment's
    assert built.manifest["own_disk_bytes"] < 5_000_000  # torch (~1.7 GB) is not in it


def test_building_never_touches_the_main_environment(pin_check):
    built, before = pin_check
    assert envs.site_listing(MAIN_SITE_PACKAGES) == before
    # pip saw the main six 1.17.0 and declined to uninstall it ("outside environment").
    assert built.manifest["not_uninstalled_outside"] >= 1
    assert "Not uninstalling six" in (built.path / "build.log").read_text()


def test_a_built_environment_is_reused_not_rebuilt(pin_check):
    built, _ = pin_check
    again = envs.ensure_built(envs.load_spec("pin-check"))
    assert again.path == built.path
    assert again.manifest["built_at_unix"] == built.manifest["built_at_unix"]


def test_package_list_marks_own_pins_and_hides_shadowed_versions(pin_check):
    built, _ = pin_check
    listed = {package["name"]: package for package in envs.packages(built)}
    assert listed["six"] == {"name": "six", "version": "1.16.0", "origin": "own"}
    assert listed["torch"]["origin"] == "shared"
    assert sum(package["name"] == "six" for package in envs.packages(built)) == 1


def test_runner_runs_a_declared_environment_with_same_math(pin_check, inline, monkeypatch, tmp_path):
    """The native adapter, told to run in pin-check, is bitwise the main environment's native run."""
    built, _ = pin_check
    fields = {"task": "scaling", "steps": 6, "lr": 0.05, "batch_size": 16}
    main = inline(Spec(adapter="native", **fields))
    monkeypatch.setattr(NativeAdapter, "environment", "pin-check")
    isolated = run_spec(Spec(adapter="native", **fields), RunOptions(results_dir=tmp_path, timeout_s=300))
    assert isolated["status"] == "ok", (isolated.get("error"), isolated.get("output_tail"))
    assert isolated["environment"]["executable"].startswith(str(built.path))
    record = isolated["environment"]["isolated"]
    assert record["name"] == "pin-check" and record["key"] == built.spec.key
    assert {"name": "six", "version": "1.16.0", "origin": "own"} in record["packages"]
    # Same task, sampler, initial weights and probe: the same run, bit for bit.
    assert isolated["weights_digest"] == main["weights_digest"]
    assert isolated["trajectory"]["losses"] == main["trajectory"]["losses"]
    on_disk = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert on_disk["environment"]["isolated"]["key"] == built.spec.key


def test_an_environment_that_cannot_build_fails_the_spec_not_the_suite(envs_build_root, monkeypatch, tmp_path):
    envs_dir = tmp_path / "envs"
    envs_dir.mkdir()
    (envs_dir / "broken.txt").write_text("six==1.16.0 ; this is not a marker\n")  # pip rejects it offline
    monkeypatch.setattr(envs, "ENVS_DIR", envs_dir)
    monkeypatch.setattr(NativeAdapter, "environment", "broken")
    result = run_spec(
        Spec(task="scaling", adapter="native", steps=2, lr=0.05, batch_size=16),
        RunOptions(results_dir=tmp_path / "results"),
    )
    assert result["status"] == "failed"
    assert "environment" in result["error"] and "broken" in result["error"]
    assert not envs.load_spec("broken", envs_dir).path.exists()  # never looks built


# --- the Flash adapter, as far as the main environment can see it -----------------------------


def test_flash_adapter_declares_its_environment_and_imports_without_flash():
    adapter = get_adapter("flash")
    assert isinstance(adapter, FlashAdapter) and adapter.style == "high-level"
    assert envs.declared_environment("flash") == "flash"
    assert envs.declared_environment("native") is None
    assert envs.declared_environment("no-such-adapter") is None  # the worker reports that, as before
    spec = envs.load_spec("flash")
    assert "lightning-flash==0.8.2" in spec.requirements and "numpy<2" in spec.requirements
    assert spec.share_main


def test_flash_check_and_declared_verdicts():
    adapter = FlashAdapter()
    task = get_task("digits")
    assert adapter.check(Request(task=task, mode="aligned", precision="fp32", world_size=1, device_type="cpu")) is None
    # fp16 on CPU: Lightning 1.9's MixedPrecisionPlugin with a CPU GradScaler (the flag alone would be bf16)
    assert (
        adapter.check(Request(task=task, mode="aligned", precision="fp16-mixed", world_size=1, device_type="cpu"))
        is None
    )
    assert adapter.check(Request(task=task, mode="aligned", precision="fp32", world_size=1, compile=True)) is None
    assert "distributed" in adapter.check(
        Request(task=task, mode="aligned", precision="fp32", world_size=2, device_type="cpu")
    )
    assert (
        adapter.expected_parity(
            Request(task=get_task("digits"), mode="aligned", precision="fp32", world_size=1, grad_accum=1)
        )
        == "bitwise"
    )
    assert (
        adapter.expected_parity(
            Request(task=get_task("digits"), mode="aligned", precision="fp32", world_size=1, grad_accum=3)
        )
        == "close"
    )
    assert (
        adapter.expected_parity(
            Request(task=get_task("digits"), mode="defaults", precision="fp32", world_size=1, grad_accum=1)
        )
        == "not-comparable"
    )


def test_pretrained_fallback_warning_is_detected():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("something unrelated", UserWarning, stacklevel=1)
        warnings.warn(
            f"{PRETRAINED_FALLBACK} for the selected backbone. The backbone has been created with"
            " `pretrained=False` instead.",
            UserWarning,
            stacklevel=1,
        )
    found = pretrained_fallbacks(caught)
    assert len(found) == 1 and "pretrained=False" in found[0]


def test_inference_table_covers_the_four_high_level_apis():
    libraries = {row.library.split()[0] for row in INFERENCE_TABLE}
    assert {"lightning-flash", "keras", "transformers", "fastai"} <= libraries
    fastai = [row for row in INFERENCE_TABLE if row.library == "fastai"]
    assert {row.entry_point.split("(")[0] for row in fastai} == {"vision_learner", "tabular_learner"}
    assert all(row.num_classes.startswith("inferred") for row in fastai)
    flash_rows = [row for row in INFERENCE_TABLE if row.library == "lightning-flash"]
    assert all(row.num_classes.startswith("stated") for row in flash_rows)
    assert len(inference_table()) == len(INFERENCE_TABLE) and markdown().count("\n") == len(INFERENCE_TABLE) + 2


# --- slow: the Flash environment itself (`make test-deep`) --------------------------------------


@pytest.fixture(scope="module")
def flash_environment():
    """Build (or reuse, keyed by its requirements) the real Flash environment under .envs/."""
    before = envs.site_listing(MAIN_SITE_PACKAGES)
    built = envs.ensure_built(envs.load_spec("flash"))
    assert envs.site_listing(MAIN_SITE_PACKAGES) == before
    return built


@pytest.mark.slow
def test_flash_environment_pins_lightning_1_9_and_shares_torch(flash_environment):
    own = {p["name"]: p["version"] for p in envs.packages(flash_environment) if p["origin"] == "own"}
    assert own["lightning-flash"] == "0.8.2"
    assert own["pytorch-lightning"].startswith("1.9.")
    assert own["numpy"].startswith("1.")
    assert "torch" not in own  # shared with the main environment
    assert flash_environment.manifest["own_disk_bytes"] < 500_000_000


def flash_pair(tmp_path, **fields):
    options = RunOptions(results_dir=tmp_path, timeout_s=600)
    native = run_spec(Spec(adapter="native", **{**fields, "mode": "aligned"}), options)
    flash = run_spec(Spec(adapter="flash", **fields), options)
    assert native["status"] == "ok", native.get("error")
    assert flash["status"] == "ok", (flash.get("error"), flash.get("output_tail"))
    return native, flash


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "precision", "lr", "batch_size", "grad_accum"),
    [("digits", "fp32", 0.05, 16, 1), ("scaling", "bf16-mixed", 0.05, 32, 1), ("digits", "fp32", 0.05, 16, 2)],
)
def test_flash_aligned_matches_native_bitwise(flash_environment, tmp_path, task, precision, lr, batch_size, grad_accum):
    fields = {"task": task, "precision": precision, "steps": 8, "lr": lr, "batch_size": batch_size}
    native, flash = flash_pair(tmp_path, **fields, grad_accum=grad_accum)
    verdict = compare_files(native, flash, tmp_path)
    assert verdict.verdict == "bitwise", verdict.describe()
    declared = FlashAdapter().expected_parity(
        Request(task=get_task("digits"), mode="aligned", precision=precision, world_size=1, grad_accum=grad_accum)
    )
    assert declared == "bitwise"
    assert flash["notes"]["pytorch_lightning"].startswith("1.9.")
    assert flash["notes"]["sampler"].startswith("harness ShardedBatchSampler")
    assert flash["notes"]["pretrained"].startswith("none requested")
    assert flash["environment"]["isolated"]["name"] == "flash"
    if precision == "bf16-mixed":
        assert "bfloat16" in flash["notes"]["precision_impl"]


@pytest.mark.slow
def test_flash_defaults_run_states_num_classes_by_hand(flash_environment, tmp_path):
    native, flash = flash_pair(tmp_path, task="digits", mode="defaults", steps=8, lr=0.05, batch_size=16)
    assert flash["notes"]["flash_task"] == "ClassificationTask"
    assert flash["notes"]["stated_by_hand"]["num_classes"] == 10
    assert flash["notes"]["sampler"] == "RandomSampler"
    assert compare_files(native, flash, tmp_path).verdict == "not-comparable"
    assert flash["notes"]["flash_image"].startswith("unavailable")
