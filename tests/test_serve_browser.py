"""The explorer page of `ctxlm serve` in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, which scripts/install-browser.sh installs) driven by Selenium, against a real uvicorn server on
127.0.0.1. Typing a sentence shows its tokens and attention; the polysemy and layer-combination views and the
generation stream show what the API returns. The README's picture is made by benchmarks/serve_screenshot.py."""

import re
import shutil
from pathlib import Path

import httpx
import pytest
import torch

from ctxlm.serve import BackgroundServer, Served, create_app, load_served
from helpers import tiny

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if Path(p).exists()), None)
pytestmark = [pytest.mark.skipif(BROWSER is None or DRIVER is None,
                                 reason="needs headless Chromium: Debian's chromium and chromium-driver "
                                        "(scripts/install-browser.sh)"),
              pytest.mark.default_precision]  # the page shows what the API returns, in whatever auto runs
RUSSIAN = "Ворота замка закрыты на замок"


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--lang=en-US"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def open_page(driver, url: str) -> WebDriverWait:
    driver.get(url + "/")
    wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))  # a view redrawn
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    return wait


def texts(driver, selector: str) -> list[str]:
    return [node.text for node in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_tokens_attention_and_polysemy_views_show_what_the_api_returns(browser):
    with BackgroundServer(create_app(load_served("minilm"))) as url:
        api = httpx.Client(base_url=url, timeout=60)
        wait = open_page(browser, url)
        shown = {panel.get_attribute("id") for panel in browser.find_elements(By.CSS_SELECTOR, ".panel")
                 if panel.is_displayed()}
        assert shown == {"panel-input", "panel-tokens", "panel-attention", "panel-layers", "panel-neighbours"}

        box = browser.find_element(By.ID, "text")
        box.clear()
        box.send_keys(RUSSIAN)
        tokens = api.post("/tokenize", json={"text": RUSSIAN}).json()
        wait.until(lambda d: texts(d, "#tokens .token .text") == [t.replace(" ", "\u2423") for t in tokens["display"]])
        assert browser.find_element(By.ID, "text").get_attribute("value") == RUSSIAN  # round trip
        assert texts(browser, "#tokens .token .id") == [str(i) for i in tokens["ids"]]
        words = browser.find_elements(By.CSS_SELECTOR, "#tokens .word:not(.special)")
        assert len(words) == 5  # sub-word pieces grouped by word
        first = browser.find_elements(By.CSS_SELECTOR, "#tokens .token")[1]
        assert first.get_attribute("title").startswith('piece "В"')  # the text's own character, before lower-casing

        # attention: a grid of the top layer's 12 heads; a click shows one in detail
        wait.until(lambda d: len(texts(d, "#attn-top li")) == len(tokens["tokens"]))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#attn-grid .head canvas")) == 12
        browser.find_elements(By.CSS_SELECTOR, "#attn-grid .head")[4].click()
        wait.until(lambda d: d.find_element(By.ID, "attn-detail-title").text == "layer 6, head 5")
        weights = torch.tensor(api.post("/attention", json={"text": RUSSIAN, "layer": 6}).json()["attention"][0][4])
        shown_keys = [int(item.get_attribute("data-key")) for item in browser.find_elements(By.CSS_SELECTOR,
                                                                                             "#attn-top li")]
        for query, key in enumerate(shown_keys):
            assert weights[query, key] == weights[query].max()
        select = browser.find_element(By.ID, "attn-layer")
        select.find_element(By.CSS_SELECTOR, "option[value='2']").click()
        wait.until(lambda d: d.find_element(By.ID, "attn-detail-title").text.startswith("layer 2,"))

        # the polysemy view: the page's table is the API's cosines, layer by layer
        sentences = [line.strip() for line in browser.find_element(By.ID, "poly-sentences").get_attribute(
            "value").splitlines() if line.strip()]
        layers = api.post("/layers", json={"sentences": sentences, "word": "bank"}).json()
        means = texts(browser, "#poly-table td.mean")
        assert means == [f"{m:.3f}" for m in layers["mean_cosine"]]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#poly-chart circle")) == 7
        # BERT's Table 7: a row per text, a column per combination
        rows = browser.find_elements(By.CSS_SELECTOR, "#nb-table tr")
        assert len(rows) == 1 + 5 and len(rows[0].find_elements(By.TAG_NAME, "th")) == 1 + 6
        assert RUSSIAN in rows[-1].text

        # a bad request is shown as its one-line reason, and the page keeps working
        word = browser.find_element(By.ID, "poly-word")
        word.clear()
        word.send_keys("castle")
        browser.find_element(By.ID, "poly-run").click()
        wait.until(lambda d: "castle" in d.find_element(By.ID, "poly-status").text)
        assert "error" in browser.find_element(By.ID, "poly-status").get_attribute("class")
        assert api.get("/health").json()["status"] == "ok"


def test_generation_streams_step_by_step_with_candidates(browser, corpus_dir):
    model = tiny("gpt2", corpus=corpus_dir, max_positions=64).eval()
    with BackgroundServer(create_app(Served("tiny-gpt2", model))) as url:
        wait = open_page(browser, url)
        assert browser.find_element(By.ID, "panel-generate").is_displayed()
        assert not browser.find_element(By.ID, "panel-fill").is_displayed()
        maximum = browser.find_element(By.ID, "gen-max")
        maximum.clear()
        maximum.send_keys("8")
        browser.find_element(By.ID, "gen-run").click()
        wait.until(lambda d: re.match(r"\d+ tokens", d.find_element(By.ID, "gen-status").text))
        expected = httpx.post(url + "/generate", json={"prompt": "The history of", "max_new_tokens": 8,
                                                       "temperature": 0.8, "top_k": 40, "top_p": 1.0, "seed": 0,
                                                       "candidates": 8}, timeout=60).json()
        steps = browser.find_elements(By.CSS_SELECTOR, "#gen-text .step")
        assert len(steps) == len(expected["steps"])
        shown = "".join(step.text if step.text != "·" else "" for step in steps)
        assert shown.split() == expected["text"].split()
        steps[0].click()
        bars = texts(browser, "#gen-candidates .bar-label")
        # each bar reads as text (a space shown as ␣), never a byte-level entry such as "Ġthe"
        assert bars == [c["display"].replace(" ", "\u2423") for c in expected["steps"][0]["candidates"]]
