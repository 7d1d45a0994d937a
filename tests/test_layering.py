"""Layering: parsing a config or a study spec imports no torch; `rewards/` (pure tensor math) imports neither
`models/` nor anything that reads files, so `models/` may import it without a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rlhfscale"


def test_config_spec_pipeline_and_study_import_no_torch():
    code = ("import sys; import rlhfscale.config, rlhfscale.study.spec, rlhfscale.study.runner, "
            "rlhfscale.study.commands, rlhfscale.study.targets, rlhfscale.pipeline, rlhfscale.checks, "
            "rlhfscale.contract, rlhfscale.algorithms; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def imported_modules(path: Path) -> set[str]:
    """The rlhfscale modules a file imports, as dotted names relative to the package."""
    tree, found = ast.parse(path.read_text()), set()
    package = path.relative_to(PACKAGE).parent.parts
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.add(".".join([*base, *(node.module or "").split(".")]).strip("."))
            elif (node.module or "").startswith("rlhfscale"):
                found.add(node.module.removeprefix("rlhfscale").strip("."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("rlhfscale").strip(".") for a in node.names if a.name.startswith("rlhfscale")}
    return found


def test_rewards_is_pure_and_below_models():
    for path in sorted((PACKAGE / "rewards").glob("*.py")):
        modules = imported_modules(path)
        assert all(m.startswith(("rewards", "registry")) or m == "" for m in modules), (path.name, modules)
        source = path.read_text()
        assert "open(" not in source and "read_text" not in source and ".backward(" not in source, path.name


def test_models_does_not_import_the_file_side_of_rewards():
    for path in sorted((PACKAGE / "models").glob("*.py")):
        assert not any(m.startswith(("rm", "stages", "study")) for m in imported_modules(path)), path.name
