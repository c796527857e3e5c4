"""The demo's HTML report: self-contained (no network reference), and it renders in a real browser."""

import re
import shutil

import pytest

from kcs_tl import DiscoveryConfig
from kcs_tl.cli import main
from kcs_tl.cli.discover import run

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
NETWORK = [r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", r"""from\s*["']https?:""", r"unpkg\.com",
           r"cdn\.jsdelivr", r"""@import\s+url\(\s*["']?https?:""", r"<link[^>]+https?:"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, builtin):
    """What ``kcs-tl demo`` runs (``kcs_tl.cli.discover.run``), with a short search and a smaller control set."""
    z, task = builtin
    out = tmp_path_factory.mktemp("report") / "demo"
    cfg = DiscoveryConfig(steps=8, eval_every=4, kg_batch_size=16, lm_batch_size=2, progress=False)
    run(z.model, task.target, task.control, task.lm, cfg, out, False, n_random=1, model_name="tiny-world")
    return out


def test_the_demo_writes_a_self_contained_report(demo):
    assert {p.name for p in demo.iterdir()} >= {"report.html", "target.jsonl", "control.jsonl", "run.json"}
    page = (demo / "report.html").read_text()
    for pattern in NETWORK:
        assert not re.search(pattern, page, re.I), pattern
    assert page.count("var CircuitsVis=") == 1  # the bundle, once
    assert page.count("CircuitsVis.render(") == 6  # 3 attention views, 2 token views, 1 top-k view
    for heading in ("Evaluation", "Sparsity by layer and module", "Components", "vs head", "vs neuron",
                    "random", "data:image/png;base64"):
        assert heading in page
    assert (demo / "report.html").stat().st_size < 5 * 2**20


@pytest.mark.slow
def test_the_report_command_rewrites_a_run_folders_report(demo, capsys):
    main(["report", str(demo), "--out", str(demo.parent / "again.html"), "--n-random", "2"])
    assert "wrote" in capsys.readouterr().out and (demo.parent / "again.html").is_file()
    with pytest.raises(SystemExit) as info:
        main(["report", str(demo)])
    assert info.value.code == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["report", str(demo / "nowhere")])
    assert info.value.code == 2 and "is not a folder" in capsys.readouterr().err


def test_the_report_renders_offline_in_chromium(demo, tmp_path):
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=browser, args=CHROMIUM_FLAGS)
        page = chrome.new_page(viewport={"width": 1300, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        def offline(route):  # the page may read itself and inline data, nothing else
            requests.append(route.request.url)
            local = route.request.url.startswith(("file:", "data:"))
            route.continue_() if local else route.abort()

        page.route("**/*", offline)
        page.goto((demo / "report.html").as_uri())
        page.wait_for_function("document.querySelectorAll('[id^=circuits-vis] *').length > 0")
        page.wait_for_timeout(1000)
        widgets = page.query_selector_all("div[id^=circuits-vis]")
        sizes = [w.bounding_box() for w in widgets]
        filled = [len(w.query_selector_all("*")) for w in widgets]
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        chrome.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert len(widgets) == 6
    assert all(s and s["width"] > 0 and s["height"] > 0 for s in sizes), sizes
    assert all(n > 0 for n in filled), filled
