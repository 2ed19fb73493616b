"""The documentation's math renders offline: MathJax ships with the site, checked in a browser.

Builds the HTML site, opens a page full of math in headless Chromium with every
http(s) request sent to a dead proxy (offline), and reads the DOM MathJax leaves
behind. The same page with MathJax from a CDN, as Sphinx serves it by default,
shows its math as raw ``\\(f\\)``: the check tells the two apart. ``make
test-slow`` installs Debian's ``chromium`` first (``make browser``).
"""

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PAGE = "algorithm.html"  # the page with the most math: inline, display and amsmath
LOCAL_MATHJAX = "_static/mathjax/tex-chtml.js"
CDN_MATHJAX = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"
# What Sphinx writes for inline math before MathJax typesets it.
RAW_INLINE = re.compile(r'<span class="math notranslate nohighlight">\s*\\\(')


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """The HTML site, built here (warnings are `make docs`'s business, not this check's)."""
  out = tmp_path_factory.mktemp("html")
  subprocess.run(
      [sys.executable, "-m", "sphinx", "-q", "-b", "html", "-d", str(out / ".doctrees"),
       str(ROOT / "docs"), str(out)],
      check=True, timeout=900,
  )
  return out


@pytest.fixture(scope="module")
def browser():
  found = next((path for path in map(shutil.which, BROWSERS) if path), None)
  if found is None:
    pytest.fail("no headless browser: `make browser` installs Debian's chromium (as root), "
                f"or put one of {', '.join(BROWSERS)} on PATH")
  return found


def _headless(browser, page, profile, *mode):
  """Runs the browser on a local page with the network cut off; returns its stdout."""
  command = [
      browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
      f"--user-data-dir={profile}",
      # Every http(s) request goes to a port nothing listens on: the page must need no network.
      "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
      "--virtual-time-budget=20000", "--window-size=1100,1400", *mode, page.as_uri(),
  ]
  return subprocess.run(command, capture_output=True, text=True, check=True, timeout=180).stdout


def test_site_serves_mathjax_itself_and_no_script_from_the_network(site):
  html = (site / PAGE).read_text()
  assert f'src="{LOCAL_MATHJAX}"' in html
  assert not re.findall(r'<script[^>]+src="https?://', html)
  assert (site / LOCAL_MATHJAX).stat().st_size > 100_000
  assert len(RAW_INLINE.findall(html)) > 20  # the page's math, waiting to be typeset


def test_math_renders_offline_in_a_headless_browser_and_the_screenshot_is_taken(
    site, browser, tmp_path
):
  html = (site / PAGE).read_text()
  inline = len(RAW_INLINE.findall(html))
  dom = _headless(browser, site / PAGE, tmp_path / "profile", "--dump-dom")
  assert not RAW_INLINE.findall(dom)  # every \(...\) was typeset
  assert dom.count("<mjx-container") >= inline
  screenshot = tmp_path / "algorithm.png"
  _headless(browser, site / PAGE, tmp_path / "profile", f"--screenshot={screenshot}")
  assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_math_from_a_cdn_stays_raw_offline_so_the_browser_check_can_fail(site, browser, tmp_path):
  """The page as Sphinx would serve it without the offline MathJax: raw LaTeX."""
  cdn_page = site / "algorithm_cdn.html"
  cdn_page.write_text((site / PAGE).read_text().replace(LOCAL_MATHJAX, CDN_MATHJAX))
  dom = _headless(browser, cdn_page, tmp_path / "profile", "--dump-dom")
  assert "<mjx-container" not in dom
  assert len(RAW_INLINE.findall(dom)) > 20
