"""Screenshots of the dashboard for the docs: starts a demo in a temporary directory, signs in as the operator
in Debian's Chromium (Playwright; never `playwright install`) and saves full-page PNGs of each page in English
and Chinese next to this script, as {page}-{lang}.png (viewport 1400x900).

Run by hand from the repository: `.venv/bin/python docs/screenshots/take.py` (needs the venv's [test] extra,
/usr/bin/chromium and a CJK font for the Chinese pages: Debian's fonts-wqy-microhei).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser import launch, live, running_demo, sign_in  # noqa: E402

PAGES = {
    "overview": "/ui/",
    "accounts": "/ui/accounts",
    "meters": "/ui/meters",
    "account": "/ui/accounts/A-1",
    "meter": "/ui/meters/M-1",
    "alarms": "/ui/alarms?state=all",
    "confirm": "/ui/act/disconnect/M-3",
}
LANGUAGES = {"en": "en-US", "zh": "zh-CN"}


def main() -> int:
    if not shutil.which("chromium"):
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout.strip()
    if not fonts:
        print("no CJK font: the Chinese pages would show boxes (apt-get install fonts-wqy-microhei)",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="dashboard-shots-") as tmp, running_demo(Path(tmp)) as demo, \
            sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for lang, locale in LANGUAGES.items():
                context = browser.new_context(locale=locale, viewport={"width": 1400, "height": 900})
                page = sign_in(context.new_page(), demo, "operator")
                expected = "zh-CN" if lang == "zh" else "en"
                for name, path in PAGES.items():
                    page.goto(demo.url(path))
                    live(page)
                    if page.locator("html").get_attribute("lang") != expected:
                        raise SystemExit(f"{path} is not in {expected}")
                    target = HERE / f"{name}-{lang}.png"
                    page.screenshot(path=str(target), full_page=True, animations="disabled")
                    print(target.relative_to(ROOT))
                context.close()
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
