"""The structure docs/architecture.md promises, read from the sources: floors that only look
down, accel reached through one seam, no environment written by library code, and the run
directory's names in one module."""
import ast
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..", "platform")

# what each package may import of rayrec (besides itself and the bottom floor's modules)
ALLOWED = {
    "accel": {"models"},
    "models": set(),
    "etl": set(),
    "train": {"models", "etl", "accelerated"},
    "serve": {"models", "etl", "accelerated"},
    "tune": {"models", "train", "etl", "accelerated"},
}
BOTTOM = {"schema", "storage", "files", "rundir", "arrays", "metrics", "config_io", "raylocal", "threads", "plot",
          "synth"}


def sources():
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), open(path).read()


def rayrec_imports(text: str) -> set[str]:
    """The rayrec modules a file imports (at any depth: lazy imports count), as 'pkg' or 'pkg.mod'."""
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rayrec"):
            parts = node.module.split(".")[1:]
            out.add(".".join(parts) if parts else node.names[0].name)
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("rayrec.")}
    return out


def test_each_package_imports_only_the_floors_below_it():
    wrong = []
    for rel, text in sources():
        package = rel.split(os.sep)[0]
        if package not in ALLOWED:
            continue
        for mod in rayrec_imports(text):
            top = mod.split(".")[0]
            if top not in (package, *ALLOWED[package], *BOTTOM):
                wrong.append(f"{rel} imports rayrec.{mod}")
    assert not wrong


def test_accel_is_reached_only_through_its_seam_and_the_build_step():
    importers = {rel for rel, text in sources() if not rel.startswith("accel" + os.sep)
                 and any(m.split(".")[0] == "accel" for m in rayrec_imports(text))}
    assert importers == {"accelerated.py", "cli_accel.py"}


def test_library_code_writes_no_environment_variables():
    writes = re.compile(r"os\.environ\[[^\]]+\]\s*=(?!=)|environ\.(setdefault|update|pop)\(|os\.putenv\(")
    found = [rel for rel, text in sources() if writes.search(text)]
    assert found == ["cli.py"]   # the CLI, for its own process only (raylocal.cli_env)


def test_the_run_directory_names_live_in_one_module():
    names = re.compile(r"[\"'](metrics\.json|stopped\.json|progress\.json|model\.safetensors|model\.json)[\"']")
    found = sorted(rel for rel, text in sources() if names.search(text))
    assert found == ["rundir.py"]
