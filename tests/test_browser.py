"""The reader's experience in a real browser: JupyterLab on 127.0.0.1 with a token, driven by Playwright through
Debian's Chromium (never a downloaded browser), at a 1366 x 768 laptop window with the file browser open.

Runs notebook 01 and the widget notebook 03 (smoke sizes) with Run All, and asserts that no cell errored, that
every figure fits the window without being scaled down, and that moving a slider redraws the figure. Then opens
the book (`make book`, built from docs/executed/) over HTTP: its index lists every notebook, and on the
experiment page of notebook 07 and every other page each figure loads and fits the window. Screenshots go to
results/browser/. Skipped, with a message saying why, where Chromium or Playwright is missing.
"""

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a JupyterLab server and a browser

ROOT = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1366, "height": 768}
SHOTS = ROOT / "results" / "browser"
RUN_TIMEOUT_S = 420  # Run All of one smoke notebook, with a wide margin for a busy machine


def _chromium():
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


CHROMIUM = _chromium()
if CHROMIUM is None:
    pytest.skip("Chromium not found (Debian: apt-get install chromium; or set CHROMIUM=/path): the real-browser "
                "test is skipped", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (requirements.txt) is not installed: "
                               "the real-browser test is skipped")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of notebooks/ (so Run All never saves outputs into the repository)."""
    work = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", work / "notebooks", ignore=shutil.ignore_patterns("cache"))
    port, token = _free_port(), "unroll-" + os.urandom(8).hex()
    settings = work / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "official Jupyter news?" toast over the screenshots
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = dict(os.environ, UNROLL_SMOKE="1", OMP_NUM_THREADS="1", UNROLL_CACHE=str(work / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               JUPYTER_RUNTIME_DIR=str(work / "runtime"), JUPYTER_CONFIG_DIR=str(work / "config"))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work / 'notebooks'}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.workspaces_dir={work / 'workspaces'}",
           f"--LabApp.user_settings_dir={work / 'settings'}", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    log = open(work / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (work / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  for (const c of cells) {
    for (let i = 0; i < c.model.outputs.length; i++) {
      const o = c.model.outputs.get(i).toJSON();
      if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
    }
  }
  const busy = [...panel.node.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'));
  return {done: !busy && panel.sessionContext.session.kernel.status === 'idle',
          ran: cells.filter(c => c.model.executionCount !== null).length, total: cells.length, errors};
}"""

FIGURES = """() => {
  const area = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')
            || document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const limit = Math.min(window.innerWidth, area.getBoundingClientRect().right);
  return [...document.querySelectorAll('.jp-OutputArea-output img, .jp-OutputArea-output > svg')].map(el => {
    const r = el.getBoundingClientRect();
    const natural = el.tagName === 'IMG' ? el.naturalWidth : r.width;
    return {left: r.left, right: r.right, width: r.width, natural, limit};
  });
}"""


def _open_and_run_all(page, base, token, name):
    workspace = name.split("_")[0]  # a fresh workspace per notebook: only this notebook is open
    page.goto(f"{base}/lab/workspaces/nb{workspace}/tree/{name}?reset&token={token}")
    page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return w && w.context && w.context.path.endsWith(name) && w.sessionContext &&"
                           " w.sessionContext.session && w.sessionContext.session.kernel &&"
                           " w.sessionContext.session.kernel.status === 'idle'; }",
                           arg=name, timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:activate')")  # file browser open
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        page.wait_for_function(f"() => {{ const s = ({NOTEBOOK_STATE})(); return s.done && s.ran > 0; }}",
                               timeout=RUN_TIMEOUT_S * 1000, polling=1000)
    except sync_api.TimeoutError:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.timeout.png"))
        pytest.fail(f"{name}: Run All did not finish in {RUN_TIMEOUT_S} s: {page.evaluate(NOTEBOOK_STATE)}")
    state = page.evaluate(NOTEBOOK_STATE)
    assert not state["errors"], f"{name}: cells raised {state['errors']}"
    assert state["ran"] == state["total"], f"{name}: Run All stopped early: {state}"
    return state


def test_notebook_01_runs_and_its_figures_fit(lab, browser):
    base, token = lab
    page = browser.new_page(viewport=VIEWPORT)
    name = "01_unlearning_and_verification_error.ipynb"
    _open_and_run_all(page, base, token, name)
    figs = page.evaluate(FIGURES)
    assert figs, "no figure rendered"
    for f in figs:
        assert f["right"] <= f["limit"] + 1, f"a figure is clipped at the window edge: {f}"
        assert f["natural"] <= f["width"] + 1, f"a figure is scaled down to fit: {f}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator(".jp-OutputArea-output img, .jp-OutputArea-output > svg").last.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "01.png"))
    page.close()


def test_widget_notebook_slider_redraws_the_figure(lab, browser):
    base, token = lab
    page = browser.new_page(viewport=VIEWPORT)
    name = "03_single_gradient_unlearning.ipynb"
    _open_and_run_all(page, base, token, name)
    for f in page.evaluate(FIGURES):
        assert f["right"] <= f["limit"] + 1, f"a figure is clipped at the window edge: {f}"
        assert f["natural"] <= f["width"] + 1, f"a figure is scaled down to fit: {f}"
    interact = page.locator(".widget-interact").first
    interact.scroll_into_view_if_needed()
    sliders = interact.locator(".widget-slider, .widget-hslider")
    assert sliders.count() >= 1, "no slider in the interactive panel"
    figure = interact.locator(".jp-OutputArea-output img, .jp-OutputArea-output svg").first
    figure.wait_for(timeout=60_000)
    before = figure.evaluate("el => el.src || el.outerHTML")
    # drag the last slider's handle (t, at its maximum) to the left, as a reader would
    handle = sliders.last.locator(".noUi-handle").first
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] - 80, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    try:
        page.wait_for_function(
            "([el, old]) => { const f = el.querySelector('.jp-OutputArea-output img, .jp-OutputArea-output svg');"
            " return f && (f.src || f.outerHTML) !== old; }",
            arg=[interact.element_handle(), before], timeout=60_000)
    except sync_api.TimeoutError:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "03_widget.failed.png"))
        pytest.fail("moving the slider did not redraw the figure")
    SHOTS.mkdir(parents=True, exist_ok=True)
    interact.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "03_widget.png"))
    page.close()


BOOK_HTML = ROOT / "docs" / "_build" / "html"
BOOK_SOURCES = [ROOT / "docs" / "conf.py", *sorted((ROOT / "docs").glob("*.md")),
                *sorted((ROOT / "docs" / "executed").glob("*.ipynb"))]
EXPERIMENT_PAGE = "executed/07_cifar_fine_tuning.html"  # Exp A and B: the paper's main experiment

BOOK_FIGURES = """() => [...document.querySelectorAll('.cell_output img')].map(el => {
  const r = el.getBoundingClientRect();
  return {src: el.getAttribute('src'), complete: el.complete, natural: el.naturalWidth, left: r.left,
          right: r.right, width: r.width, limit: window.innerWidth};
})"""


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """The book of `make book`, served on 127.0.0.1: docs/_build/html when it is newer than its sources,
    otherwise built here (Sphinx reads the stored outputs; well under two minutes) into a temporary folder."""
    html = BOOK_HTML
    index = html / "index.html"
    if not index.exists() or index.stat().st_mtime < max(p.stat().st_mtime for p in BOOK_SOURCES):
        html = tmp_path_factory.mktemp("book") / "html"
        subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", str(ROOT / "docs"), str(html)],
                       check=True, cwd=ROOT, timeout=600)
    handler = functools.partial(QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no access log in the test output
        pass


def _executed_pages():
    return [f"executed/{p.stem}.html" for p in sorted((ROOT / "docs" / "executed").glob("[0-9][0-9]_*.ipynb"))]


def _check_book_figures(page, url):
    figs = page.evaluate(BOOK_FIGURES)
    for f in figs:
        assert f["complete"] and f["natural"] > 0, f"{url}: a figure did not load: {f}"
        assert f["left"] >= 0 and f["right"] <= f["limit"] + 1, f"{url}: a figure does not fit the window: {f}"
    return figs


def test_book_index_lists_every_notebook(book, browser):
    pages = _executed_pages()
    assert len(pages) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))), \
        "docs/executed/ lacks a notebook: run `make executed`"
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"{book}/index.html")
    links = page.evaluate("() => [...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
    for target in pages:
        assert target in links, f"the book's index does not link {target}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "book_index.png"))
    page.close()


def test_book_experiment_page_shows_its_figures(book, browser):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"{book}/{EXPERIMENT_PAGE}")
    page.wait_for_load_state("load")
    figs = _check_book_figures(page, EXPERIMENT_PAGE)
    assert figs, f"{EXPERIMENT_PAGE}: no figure on the page"
    heading = page.locator("h1").first.inner_text()
    assert "CIFAR" in heading or "Exp" in heading, heading
    page.locator(".cell_output img").first.scroll_into_view_if_needed()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "book_07.png"))
    page.close()


def test_every_book_page_loads_its_figures(book, browser):
    page = browser.new_page(viewport=VIEWPORT)
    total = 0
    for url in _executed_pages():
        page.goto(f"{book}/{url}")
        page.wait_for_load_state("load")
        total += len(_check_book_figures(page, url))
    assert total >= len(_executed_pages()), f"only {total} figures in the whole book"
    page.close()
