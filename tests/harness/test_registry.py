"""The registry: import paths, entry points, broken plugins as one line, listing without importing.

Plugins here are written into a temporary folder with a dist-info that registers them under the
``bakeoff.tasks`` / ``bakeoff.adapters`` entry-point groups, the way an installed distribution
does, and put on ``sys.path`` (in-process) or ``PYTHONPATH`` (subprocesses).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from harness import registry
from harness.cli import main
from tests.conftest import REPO_ROOT

GOOD_TASK = """
    import torch
    from torch import nn
    from bakeoff import STANDARD_TOLERANCES, Inferable, OptimizerRecipe, Task, TaskDefaults, seeded_init, tensor_data

    class Tiny(Task):
        name = "tiny"
        description = "a tiny generated task for registry tests"
        defaults = TaskDefaults(batch_size=8, steps=3, lr=0.1)
        optimizer = OptimizerRecipe(optimizer=torch.optim.SGD)
        tolerances = STANDARD_TOLERANCES

        def build_data(self, options):
            x = torch.linspace(-1, 1, 64).reshape(32, 2)
            y = (x.sum(dim=1) > 0).long()
            return tensor_data((x[:24], y[:24]), (x[24:], y[24:]), inferable=Inferable(num_classes=2), source="gen")

        def build_model(self, seed, options, data):
            return seeded_init(seed, lambda: nn.Linear(2, 2))
"""

BROKEN = {
    "plug_syntax.py": "def oops(:\n    pass\n",
    "plug_nameerror.py": "from bakeoff import Task\n\nclass Bad(Task):\n    optimizer = torch.optim.SGD\n",
    "plug_needs_args.py": textwrap.dedent(GOOD_TASK).replace(
        "class Tiny(Task):", "class NeedsArgs(Task):\n    def __init__(self, size):\n        self.size = size\n"
    ),
    "plug_no_builders.py": (
        "from bakeoff import Task\n\nclass NoBuilders(Task):\n    name = 'x'\n    description = 'x'\n"
    ),
    "plug_adapter_import.py": "import no_such_library_for_bakeoff_tests\n",
    "plug_good.py": textwrap.dedent(GOOD_TASK),
    "plug_not_a_task.py": "VALUE = 3\n",
}

ENTRY_POINTS = """\
[bakeoff.tasks]
tiny = plug_good:Tiny
broken-syntax = plug_syntax:Task
broken-name = plug_nameerror:Bad
broken-args = plug_needs_args:NeedsArgs
broken-builders = plug_no_builders:NoBuilders
broken-value = plug_not_a_task:VALUE

[bakeoff.adapters]
broken-adapter = plug_adapter_import:Adapter
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, text in BROKEN.items():
        (folder / name).write_text(text)
    info = folder / "registry_test_plugins-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: registry-test-plugins\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(folder))
    registry.clear_caches()
    yield folder
    registry.clear_caches()
    for name in list(sys.modules):
        if name.startswith("plug_"):
            del sys.modules[name]


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("broken-syntax", "SyntaxError"),
        ("broken-name", "NameError: name 'torch' is not defined at "),
        ("broken-args", "must be constructible with no arguments"),
        ("broken-builders", "does not implement build_data()"),
        ("broken-value", "not a Task subclass"),
        ("plug_good:Missing", "plug_good has no attribute 'Missing'"),
        ("no_such_module_anywhere:Task", "is it installed, on PYTHONPATH, or in the current directory?"),
    ],
)
def test_a_broken_task_is_one_line_naming_it_and_exit_2(plugin_dir, capsys, tmp_path, name, expected):
    results = tmp_path / "results"
    code, out, err = cli(capsys, "run", "--task", name, "--results-dir", str(results))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"bakeoff: error: task {name!r} (")
    assert expected in err
    assert not results.exists()


def test_a_broken_adapter_is_one_line_and_exit_2(plugin_dir, capsys, tmp_path):
    code, _, err = cli(capsys, "run", "--task", "tiny", "--adapter", "broken-adapter", "--results-dir", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert "adapter 'broken-adapter' (entry point plug_adapter_import:Adapter of registry-test-plugins 0.3)" in err
    assert "No module named 'no_such_library_for_bakeoff_tests'" in err


def test_list_lists_everything_and_check_names_the_broken_ones(plugin_dir, capsys):
    code, out, _ = cli(capsys, "list")
    assert code == 0
    for name in ("digits", "tiny", "broken-syntax", "broken-adapter", "lightning", "native"):
        assert f"  {name} " in out
    assert "plugin (entry point plug_good:Tiny of registry-test-plugins 0.3)" in out
    code, out, err = cli(capsys, "list", "--check")
    assert code == 2 and "cannot be loaded" in err
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "(loads)" in lines["tiny"] and "(loads)" in lines["digits"] and "(loads)" in lines["native"]
    for name in ("broken-syntax", "broken-name", "broken-args", "broken-builders", "broken-value", "broken-adapter"):
        assert "BROKEN:" in lines[name], lines[name]


def test_an_import_path_task_runs_and_records_its_code(plugin_dir, inline):
    from harness.plugins import with_code_identity
    from harness.spec import Spec

    spec = with_code_identity(Spec(task="plug_good:Tiny", adapter="native", batch_size=8, steps=3, lr=0.1))
    assert spec.task_code and spec.adapter_code == ""
    result = inline(spec)
    assert result["status"] == "ok", result["error"]
    plugin = result["task"]["plugin"]
    assert plugin["origin"] == "import path" and plugin["packages"] == ["plug_good"]
    assert plugin["code"] == spec.task_code and plugin["source_files"] == 1
    entry = with_code_identity(Spec(task="tiny", adapter="native", batch_size=8, steps=3, lr=0.1))
    # The entry point names the same source file, and its distribution and version too.
    assert entry.task_code == f"registry-test-plugins==0.3 {plugin['source_digest']}"


def test_builtin_names_have_no_code_identity_and_keep_their_ids():
    from harness.plugins import with_code_identity
    from harness.spec import Spec

    spec = Spec(task="digits", adapter="lightning@2.1.4", batch_size=64, steps=60, lr=0.05)
    identified = with_code_identity(spec)
    assert identified == spec and identified.spec_id == spec.spec_id
    assert "task_code" not in spec.canonical_json() and "adapter_code" not in spec.canonical_json()


def test_unknown_names_list_the_choices_and_the_import_path_form():
    with pytest.raises(registry.RegistryError, match=r"unknown task 'nope'; choose one of: charlm, .*import path"):
        registry.get_task("nope")
    with pytest.raises(registry.RegistryError, match="an adapter name"):
        registry.get_adapter("mypkg.adapters:Thing@1.0")  # a version goes with a registered name only


def test_listing_reads_the_same_attributes_the_classes_have():
    """`bakeoff list` reads built-ins' attributes from their source; they must be what the classes say."""
    for row in registry.describe_tasks():
        task = registry.get_task(row["name"])
        assert (row["description"], row["options"]) == (task.description, dict(task.options)), row["name"]
    for row in registry.describe_adapters():
        try:
            cls = registry.load_adapter_class(row["name"])
        except registry.PluginError:
            continue  # a library missing here: nothing to compare
        assert (row["style"], row["library"], row["modes"], row["environment"]) == (
            cls.style,
            cls.library,
            tuple(cls.modes),
            cls.environment,
        ), row["name"]


def test_list_imports_no_library_and_no_torch():
    code = (
        "import sys, io, contextlib\n"
        "from harness.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['list']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'fastai', 'keras', 'transformers', 'tasks.base') "
        "if m in sys.modules)\n"
        "print(heavy)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=environment, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_broken_plugin_does_not_take_down_bench_of_a_builtin_suite(plugin_dir, capsys):
    code, out, _ = cli(capsys, "bench", "--suite", "smoke", "--dry-run", "--device", "cpu")
    assert code == 0 and "1 specs in suite 'smoke'" in out


def test_plugin_path_lets_import_paths_resolve_from_a_folder_after_sys_path(tmp_path, monkeypatch):
    folder = tmp_path / "here"
    folder.mkdir()
    (folder / "plug_from_here.py").write_text(textwrap.dedent(GOOD_TASK))
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(folder))
    registry.clear_caches()
    try:
        assert registry.get_task("plug_from_here:Tiny").name == "tiny"
        assert sys.path[-1] == str(folder)  # after everything else: it can shadow nothing
    finally:
        sys.modules.pop("plug_from_here", None)
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
        registry.clear_caches()


def test_the_cli_resolves_import_paths_from_the_current_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "plug_cwd.py").write_text(textwrap.dedent(GOOD_TASK))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, "")  # restored after the test (main() sets it)
    registry.clear_caches()
    try:
        code, _, err = cli(capsys, "run", "--task", "plug_cwd:Tiny", "--steps", "0")
        assert code == 2 and "steps must be a positive integer" in err  # loaded, then the spec was refused
        assert str(tmp_path) in os.environ[registry.PLUGIN_PATH_ENV].split(os.pathsep)
    finally:
        sys.modules.pop("plug_cwd", None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
        registry.clear_caches()


def test_a_suite_file_naming_a_broken_plugin_is_bad_input(plugin_dir, tmp_path, capsys):
    suite = tmp_path / "broken.toml"
    suite.write_text('[[runs]]\ntask = "tiny"\nadapter = ["native", "broken-adapter"]\n')
    code, out, err = cli(capsys, "bench", "--suite-file", str(suite), "--dry-run", "--no-tracking")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "adapter 'broken-adapter' (entry point plug_adapter_import:Adapter" in err


def test_data_without_a_validation_set_or_digest_fails_before_training_with_the_reason(plugin_dir, inline):
    from harness.spec import Spec

    (plugin_dir / "plug_data.py").write_text(
        textwrap.dedent(GOOD_TASK)
        + textwrap.dedent("""
            class NoValidation(Tiny):
                def build_data(self, options):
                    data = super().build_data(options)
                    data.valid = data.valid.__class__(*(t[:0] for t in data.valid.tensors))
                    return data

            class NoDigest(Tiny):
                def build_data(self, options):
                    data = super().build_data(options)
                    data.digest = "todo"
                    return data
        """)
    )
    for name, message in (("NoValidation", "valid set is empty"), ("NoDigest", "digest must be the SHA-256")):
        result = inline(Spec(task=f"plug_data:{name}", adapter="native", batch_size=8, steps=3, lr=0.1))
        assert result["status"] == "failed" and message in result["error"], result["error"]
        assert result["trajectory"]["losses"] == []
