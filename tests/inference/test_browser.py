"""The web page driven in headless Chromium (Debian's chromium + chromium-driver, through selenium).

Set ``CAMIM_SCREENSHOT_DIR`` to keep the screenshots somewhere other than pytest's tmp folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import draw
from .server_util import running_server

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
POST = "RT @cnnsport : Tennis star Rafael Nadal gets engaged to girlfriend of 14 years , Mery Perello"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1100,1400",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page_url(bert_predictor):
    with running_server(bert_predictor) as url:
        yield url


def _wait(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _screenshot_dir(tmp_path: Path) -> Path:
    target = Path(os.environ.get("CAMIM_SCREENSHOT_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def test_page_predicts_like_the_predictor(browser, page_url, bert_predictor, tmp_path):
    from selenium.webdriver.common.by import By

    image_path = tmp_path / "post.png"
    draw(7, (160, 120)).save(image_path)
    browser.get(page_url)
    _wait(browser, lambda d: "relations" in d.find_element(By.ID, "model-info").text)

    browser.find_element(By.ID, "post").send_keys(POST)
    # head: select "Rafael Nadal" in the post and press Mark; tail: type the mention
    start = POST.index("Rafael Nadal")
    browser.execute_script(
        "const p = document.getElementById('post'); p.focus(); p.setSelectionRange(arguments[0], arguments[1]);",
        start,
        start + len("Rafael Nadal"),
    )
    browser.find_element(By.ID, "mark-head").click()
    assert browser.find_element(By.ID, "head").get_attribute("value") == "Rafael Nadal"
    assert "marked characters" in browser.find_element(By.ID, "head-span").text
    browser.find_element(By.ID, "tail").send_keys("Mery Perello")
    browser.find_element(By.ID, "image").send_keys(str(image_path))
    browser.find_element(By.ID, "caption").send_keys("A tennis player and a woman smiling.")
    browser.find_element(By.ID, "submit").click()

    _wait(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    expected = bert_predictor.predict(
        POST, "Rafael Nadal", "Mery Perello", image=image_path, caption="A tennis player and a woman smiling."
    )
    assert browser.find_element(By.ID, "relation").text == expected.relation
    assert f"{100 * expected.probability:.1f}%" in browser.find_element(By.ID, "probability").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#distribution tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td.rel").text for r in rows] == [
        rel for rel, _ in expected.distribution
    ]
    assert "A tennis player and a woman smiling. (given)" in browser.find_element(By.ID, "caption-used").text
    marked = browser.find_elements(By.CSS_SELECTOR, "#marked mark")
    assert [m.text for m in marked] == ["Rafael", "Nadal", "Mery", "Perello"]
    shot = _screenshot_dir(tmp_path) / "camim_page_result.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def test_page_shows_server_errors(browser, page_url, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(page_url)
    browser.find_element(By.ID, "post").send_keys("jack plays with jack for the titans")
    browser.find_element(By.ID, "head").send_keys("jack")  # occurs twice: the server asks for a span
    browser.find_element(By.ID, "tail").send_keys("titans")
    browser.find_element(By.ID, "submit").click()
    error = _wait(
        browser,
        lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed() else None,
    )
    assert "occurs 2 times" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
    browser.save_screenshot(str(_screenshot_dir(tmp_path) / "camim_page_error.png"))


@pytest.fixture(scope="module")
def keyed_url(bert_run):
    from camim.inference import Predictor

    with running_server(Predictor.from_pretrained(bert_run.path), api_key="page-key") as url:
        yield url


def test_page_asks_for_the_api_key_once(browser, keyed_url, bert_predictor):
    from selenium.webdriver.common.by import By

    def shown(element_id):
        return lambda d: (
            d.find_element(By.ID, element_id) if d.find_element(By.ID, element_id).is_displayed() else None
        )

    browser.get(keyed_url)
    _wait(browser, shown("auth"))  # /api/info answered 401: the page asks for the key
    assert "needs an API key" in browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "model-info").text == ""
    browser.find_element(By.ID, "api-key").send_keys("wrong-key")
    browser.find_element(By.ID, "api-key-save").click()
    _wait(browser, lambda d: "was refused" in d.find_element(By.ID, "error").text)
    browser.find_element(By.ID, "api-key").send_keys("page-key")
    browser.find_element(By.ID, "api-key-save").click()
    _wait(browser, lambda d: "relations" in d.find_element(By.ID, "model-info").text)
    assert not browser.find_element(By.ID, "auth").is_displayed()

    expected = bert_predictor.predict("jack plays for the titans", "jack", "titans")
    for _ in range(2):  # asked once: the second prediction (and a reload) go through with the kept key
        browser.find_element(By.ID, "post").clear()
        browser.find_element(By.ID, "post").send_keys("jack plays for the titans")
        for which, name in (("head", "jack"), ("tail", "titans")):
            browser.find_element(By.ID, which).clear()
            browser.find_element(By.ID, which).send_keys(name)
        browser.find_element(By.ID, "submit").click()
        _wait(browser, shown("result"))
        assert browser.find_element(By.ID, "relation").text == expected.relation
        assert not browser.find_element(By.ID, "auth").is_displayed()
        browser.execute_script("document.getElementById('result').hidden = true;")
    browser.refresh()
    _wait(browser, lambda d: "relations" in d.find_element(By.ID, "model-info").text)
    assert not browser.find_element(By.ID, "auth").is_displayed()
