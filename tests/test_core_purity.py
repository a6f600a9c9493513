"""starnet_core is pure: importing it loads neither Prefect, SQLAlchemy nor YAML."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_orchestration_or_db() -> None:
    code = (
        "import sys, importlib, pkgutil, starnet_core\n"
        "for m in pkgutil.iter_modules(starnet_core.__path__):\n"
        "    importlib.import_module('starnet_core.' + m.name)\n"
        "names = ('prefect', 'sqlalchemy', 'yaml', 'alembic', 'flows')\n"
        "bad = [n for n in names if n in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"starnet_core pulled in: {out.stdout.strip()}"


def test_settings_and_cli_start_without_torch() -> None:
    # `starnet runs` / `history` need neither torch nor prefect: keep their start fast
    code = (
        "import sys\n"
        "from flows.cli import build_parser\n"
        "build_parser()\n"
        "import flows.settings\n"
        "print(','.join(n for n in ('torch', 'prefect') if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"CLI start imported: {out.stdout.strip()}"
