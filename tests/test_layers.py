"""The package's layers (DESIGN.md), as import-linter contracts in pyproject.toml: nn < models < (tokenizers,
checkpoint, convert) < train < (pretrain, transfer, embed, generate) < qa < cli. grimp reads every import
statement, those inside functions too, so a lazy import cannot hide an upward edge or a cycle."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " 0 broken" in result.stdout
