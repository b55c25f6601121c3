"""The README's picture of `ctxlm serve`'s explorer page: docs/serve.png.

    .venv/bin/python benchmarks/serve_screenshot.py                      # the packaged MiniLM → docs/serve.png
    .venv/bin/python benchmarks/serve_screenshot.py --model runs/gpt2-wikitext2 --out /tmp/gpt2.png
    .venv/bin/python benchmarks/serve_screenshot.py --russian --model runs/ru/bert/checkpoint --out docs/serve_ru.png

Starts the server on 127.0.0.1 (a free port) in this process, opens the page in headless Chromium (Debian's
`chromium` and `chromium-driver`: scripts/install-browser.sh), types a sentence, waits for every panel, and saves
the whole page. About 20 seconds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "The bank by the river raised its interest rates."
# --russian: the lecture's sentence, and "замок" (castle / lock) in the polysemy panel
RUSSIAN = {"sentence": "Ворота замка закрыты на замок.", "word": "замок", "mask": "Ворота замка закрыты на [MASK].",
           "senses": ["Старый замок стоит на высоком холме.", "Рыцари вернулись в замок к вечеру.",
                      "Он повесил на дверь новый замок.", "Ворота замка закрыты на замок."]}


def chromium(width: int = 1400, height: int = 1000):
    """Headless Chromium driven by Selenium, from the system's packages (no download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if browser is None or not Path(driver).exists():
        sys.exit("needs chromium and chromium-driver: run scripts/install-browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--out", default=str(ROOT / "docs" / "serve.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--russian", action="store_true",
                        help="type the lecture's sentence and compare «замок» in castle and lock sentences")
    args = parser.parse_args()

    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ctxlm.serve import BackgroundServer, create_app, load_served

    app = create_app(load_served(args.model))
    with BackgroundServer(app) as url:
        driver = chromium(args.width)
        try:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
            def type_into(element_id: str, text: str) -> None:
                field = driver.find_element(By.ID, element_id)
                field.clear()
                field.send_keys(text)

            type_into("text", RUSSIAN["sentence"] if args.russian else SENTENCE)
            if args.russian and driver.find_element(By.ID, "panel-layers").is_displayed():
                type_into("poly-word", RUSSIAN["word"])
                type_into("poly-sentences", "\n".join(RUSSIAN["senses"]))
                driver.find_element(By.ID, "poly-run").click()
            if args.russian and driver.find_element(By.ID, "panel-fill").is_displayed():
                type_into("fill-text", RUSSIAN["mask"])
            attention = driver.find_element(By.ID, "panel-attention").is_displayed()

            def drawn(d) -> bool:
                tokens = d.find_elements(By.CSS_SELECTOR, "#tokens .token")
                return len(tokens) > 5 and (not attention or len(d.find_elements(By.CSS_SELECTOR, "#attn-top li"))
                                            == len(tokens))

            time.sleep(1)  # the last keystroke's views
            wait.until(drawn)

            def pick_head(d) -> bool:
                heads = d.find_elements(By.CSS_SELECTOR, "#attn-grid .head")
                if heads:
                    heads[min(2, len(heads) - 1)].click()
                return True

            if attention:
                wait.until(pick_head)
            for panel, button in (("panel-generate", "gen-run"), ("panel-memory", "mem-run"),
                                  ("panel-predict", "predict-run"), ("panel-fill", "fill-run")):
                if driver.find_element(By.ID, panel).is_displayed():
                    driver.find_element(By.ID, button).click()
            time.sleep(3)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(args.width, height + 40)
            time.sleep(0.5)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
