"""Regenerate the console's screenshots in docs/console/ (the README shows them).

    .venv/bin/python scripts/console_screenshots.py [--out docs/console]

They are taken by the browser tests themselves (tests/test_console_browser.py, which needs
/usr/bin/chromium and Playwright), so each picture is a page those tests just checked: the
deletion requests with an overdue one, a finished job, a model's lineage and plot, the audit
trail after verification, and the benchmark's recommendations.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("requests", "job", "model", "audit", "benchmarks")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    out = parser.parse_args().out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"LETHE_CONSOLE_SCREENSHOTS": str(out), "LETHE_REQUIRE_SERVICES": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_console_browser.py"], cwd=ROOT, env=env)
    missing = [name for name in PAGES if not (out / f"{name}.png").is_file()]
    if done.returncode or missing:
        print(f"screenshots missing: {', '.join(missing) or 'none'}; the browser tests "
              f"exited {done.returncode}", file=sys.stderr)
        return 1
    print("\n".join(str(out / f"{name}.png") for name in PAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
