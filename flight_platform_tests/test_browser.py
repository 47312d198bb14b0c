"""The prediction page in a real browser (Debian's Chromium driven by Playwright) against gunicorn,
the streaming job and the real services. Screenshots land in test-artifacts/."""

import shutil

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from flight_platform.core.features import ARRIVAL_DELAY_LABELS
from flight_platform_tests.conftest import ARTIFACTS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]
FORM_PAGE = "/flights/delays/predict_kafka"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_stack, request) -> Page:
    page = browser.new_page(base_url=live_stack)
    external = []
    page.on("request", lambda r: None if r.url.startswith(live_stack) else external.append(r.url))
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    page.close()
    assert external == [], "the page must work offline"


def fill_form(page: Page, **fields: str) -> None:
    for name, value in fields.items():
        page.fill(f"#{name}", value)


def test_submitting_the_form_shows_the_prediction(page):
    page.goto(FORM_PAGE)
    # The suggestions come from the routes in MongoDB.
    expect(page.locator("#origins option[value='JFK']")).to_have_count(1)
    fill_form(page, DepDelay="45", Carrier="DL", FlightDate="2013-06-14", FlightNum="1519",
              Origin="JFK", Dest="ATL")
    page.click("button[type=submit]")

    label = page.locator("#prediction-label")
    expect(label).to_be_visible(timeout=60_000)
    assert label.text_content() in ARRIVAL_DELAY_LABELS
    expect(page.locator("#probabilities tr")).to_have_count(len(ARRIVAL_DELAY_LABELS))
    expect(page.locator("#model-version")).to_contain_text("Model ")


def test_a_bad_date_shows_the_field_error(page):
    page.goto(FORM_PAGE)
    fill_form(page, DepDelay="5", Carrier="DL", FlightDate="2013-02-30", FlightNum="1519",
              Origin="JFK", Dest="ATL")
    page.click("button[type=submit]")

    expect(page.locator("#FlightDate-error")).to_have_text(
        "FlightDate is not a calendar date: '2013-02-30'")
    expect(page.locator("#FlightDate")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#Carrier-error")).to_have_text("")
    expect(page.locator("#prediction")).to_be_hidden()
