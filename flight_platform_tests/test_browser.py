"""The prediction page in a real browser (Debian's Chromium driven by Playwright) against gunicorn,
the streaming job and the real services, every test ending with no breach of the page's
Content-Security-Policy. Screenshots land in test-artifacts/."""

import re
import shutil

import pytest
from playwright.sync_api import Page, Route, expect, sync_playwright

from flight_platform.core.features import ARRIVAL_DELAY_LABELS
from flight_platform.settings import REPO_ROOT
from web.answer_watch import MAX_WAIT_S

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]
FORM_PAGE = "/flights/delays/predict_kafka"
PREDICT = "/flights/delays/predict/classify_realtime"
CLICKS = 10
ARTIFACTS = REPO_ROOT / "test-artifacts"  # screenshots and click-to-answer timings


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def csp_violations(page: Page) -> list[str]:
    """What the Content-Security-Policy refused on `page`, across its loads: the
    securitypolicyviolation events, and Chromium's console errors naming the policy."""
    violations = []
    page.expose_function("reportCspViolation", lambda violation: violations.append(violation))
    page.add_init_script("document.addEventListener('securitypolicyviolation', (e) =>"
                         " reportCspViolation(`${e.effectiveDirective} refused ${e.blockedURI}`));")
    page.on("console", lambda m: violations.append(m.text)
            if "Content Security Policy" in m.text else None)
    return violations


@pytest.fixture
def page(browser, live_stack, request) -> Page:
    page = browser.new_page(base_url=live_stack)
    external = []
    page.on("request", lambda r: None if r.url.startswith(live_stack) else external.append(r.url))
    violations = csp_violations(page)
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    page.close()
    assert external == [], "the page must work offline"
    assert violations == [], "the page must work under its Content-Security-Policy"


def fill_form(page: Page, **fields: str) -> None:
    for name, value in fields.items():
        page.fill(f"#{name}", value)


def test_submitting_the_form_shows_the_prediction(page):
    policy = page.goto(FORM_PAGE).headers["content-security-policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy  # no inline allowed
    # The suggestions come from the routes in MongoDB.
    expect(page.locator("#origins option[value='JFK']")).to_have_count(1)
    fill_form(page, DepDelay="45", Carrier="DL", FlightDate="2013-06-14", FlightNum="1519",
              Origin="JFK", Dest="ATL")
    page.click("button[type=submit]")

    label = page.locator("#prediction-label")
    expect(label).to_be_visible(timeout=60_000)
    assert label.text_content() in ARRIVAL_DELAY_LABELS
    expect(page.locator("#probabilities tr")).to_have_count(len(ARRIVAL_DELAY_LABELS))
    expect(page.locator("#model-line")).to_contain_text("Model ")


def test_the_policy_refuses_an_inline_script_and_the_check_sees_it(browser, live_stack):
    """The page with an inline script slipped in (as injected markup would be): the script does
    not run, the page's own script does, and the check every page test ends with reports it."""
    page = browser.new_page(base_url=live_stack)
    violations = csp_violations(page)

    def with_inline_script(route: Route) -> None:
        response = route.fetch()
        injected = response.text().replace("</main>", "</main><script>window.injected = true</script>")
        route.fulfill(response=response, body=injected)

    page.route(f"**{FORM_PAGE}", with_inline_script)
    try:
        with page.expect_console_message(lambda m: "Content Security Policy" in m.text):
            page.goto(FORM_PAGE)
        expect(page.locator("#origins option[value='JFK']")).to_have_count(1)  # predict.js ran
        assert page.evaluate("window.injected") is None
        assert "script-src-elem refused inline" in violations
    finally:
        page.close()


def submit_and_wait(page: Page) -> dict:
    """Submit a flight on a real route and wait for the page to show the answer; return the answer
    as the JSON polling endpoint gives it for the request the page made."""
    page.goto(FORM_PAGE)
    fill_form(page, DepDelay="20", Carrier="DL", FlightDate="2013-12-23", FlightNum="1519",
              Origin="JFK", Dest="ATL")
    with page.expect_response(lambda r: r.url.endswith(PREDICT) and r.request.method == "POST"
                              ) as posted:
        page.click("button[type=submit]")
    request_id = posted.value.json()["id"]
    expect(page.locator("#prediction")).to_be_visible(timeout=60_000)
    answer = page.request.get(f"{PREDICT}/response/{request_id}").json()
    assert answer["status"] == "OK"
    return answer["prediction"]


def test_the_answer_is_shown_as_probability_bars(page):
    prediction = submit_and_wait(page)
    probabilities = prediction["Probabilities"]

    rows = page.locator("#probabilities tr")
    expect(rows).to_have_count(len(ARRIVAL_DELAY_LABELS))
    assert [row.get_attribute("data-bucket") for row in rows.all()] == ["0", "1", "2", "3"]
    assert rows.locator(".bucket-label").all_text_contents() == ARRIVAL_DELAY_LABELS
    for row, bucket in zip(rows.all(), probabilities, strict=True):
        percent = bucket["Probability"] * 100
        expect(row.locator(".percent")).to_have_text(f"{percent:.1f}%")
        meter = row.get_by_role("meter")
        expect(meter).to_have_accessible_name(re.compile(re.escape(bucket["Label"])))
        assert float(meter.get_attribute("aria-valuenow")) == pytest.approx(percent, abs=0.05)
        # The bar as drawn: the filled part's share of the track is the probability.
        drawn = meter.evaluate("m => m.firstElementChild.getBoundingClientRect().width"
                               " / m.getBoundingClientRect().width")
        assert drawn == pytest.approx(bucket["Probability"], abs=0.005)

    predicted = page.locator("#probabilities tr.predicted")
    expect(predicted).to_have_count(1)
    expect(predicted).to_have_attribute("data-bucket", str(prediction["Prediction"]))
    expect(page.locator(".predicted-marker")).to_have_count(1)
    expect(predicted.locator(".predicted-marker")).to_have_text("predicted")
    expect(page.locator("#prediction-label")).to_have_text(prediction["PredictionLabel"])
    expect(page.locator("#model-version")).to_have_text(prediction["ModelVersion"])
    shadow_line = page.locator("#shadow-models")
    if prediction.get("Shadow"):
        expect(shadow_line).to_contain_text(f"Also scored by {len(prediction['Shadow'])} challenger")
    else:
        expect(shadow_line).to_be_hidden()


def test_the_answer_says_which_inputs_moved_it_most(page):
    prediction = submit_and_wait(page)  # a flight that left 20 minutes late
    label = prediction["PredictionLabel"]
    explanation = prediction["Explanation"]
    contributions = [(feature, contribution) for feature, contribution in zip(
        explanation["Features"], explanation["Contributions"], strict=True)
        if abs(contribution) >= 0.0005][:3]

    def in_words(contribution: float) -> str:
        points = abs(contribution) * 100
        size = f"{points:.0f}" if points >= 1 else f"{points:.1f}"
        return f"+{size} points toward {label}" if contribution >= 0 else f"−{size} points away from {label}"

    reasons = page.locator("#reasons li")
    expect(reasons).to_have_count(len(contributions))
    assert contributions, "the model's answer for a real flight depends on some input"
    for reason, (feature, contribution) in zip(reasons.all(), contributions, strict=True):
        words = in_words(contribution)
        expect(reason).to_contain_text(words)
        if feature == "DepDelay":
            expect(reason).to_have_text(f"Departure delay of 20 min: {words}")
    base = explanation["BaseProbability"] * 100
    expect(page.locator("#base-rate")).to_have_text(
        f"Before looking at this flight, the model gives {label} {base:.0f}%.")


def test_challenger_models_are_listed_under_the_answer(page):
    def with_shadow(route: Route) -> None:
        """The real answer, with two challenger models' predictions (as the contract's Shadow
        entries) added once it is there."""
        response = route.fetch()
        body = response.json()
        if body["status"] == "OK":
            probabilities = body["prediction"]["Probabilities"]
            body["prediction"]["Shadow"] = [
                {"ModelVersion": version, "Prediction": bucket,
                 "PredictionLabel": ARRIVAL_DELAY_LABELS[bucket], "Probabilities": probabilities}
                for version, bucket in [("challenger-a", 0), ("challenger-b", 3)]]
        route.fulfill(response=response, json=body)

    page.route(f"**{PREDICT}/response/*", with_shadow)
    submit_and_wait(page)

    expect(page.locator("#shadow-models")).to_have_text(
        f"Also scored by 2 challenger models. challenger-a predicts {ARRIVAL_DELAY_LABELS[0]}; "
        f"challenger-b predicts {ARRIVAL_DELAY_LABELS[3]}.")
    expect(page.locator("#probabilities tr.predicted")).to_have_count(1)


# Times a click to the answer being shown with the page's own clock: Playwright's own waiting
# polls, and would add its polling period to the figure.
TIME_CLICK_TO_ANSWER = """() => {
  window.clickToAnswer = {};
  document.querySelector("button[type=submit]").addEventListener(
    "click", () => { window.clickToAnswer.clicked = performance.now(); }, {capture: true, once: true});
  const box = document.getElementById("prediction");
  new MutationObserver((_, observer) => {
    if (!box.hidden) { window.clickToAnswer.shown = performance.now(); observer.disconnect(); }
  }).observe(box, {attributes: true, attributeFilter: ["hidden"]});
}"""


def click_to_answer_ms(page: Page) -> float:
    """Fill and submit the form on a fresh page; the milliseconds from the click to the bars."""
    page.goto(FORM_PAGE)
    fill_form(page, DepDelay="20", Carrier="DL", FlightDate="2013-12-23", FlightNum="1519",
              Origin="JFK", Dest="ATL")
    page.evaluate(TIME_CLICK_TO_ANSWER)
    page.click("button[type=submit]")
    expect(page.locator("#probabilities tr")).to_have_count(len(ARRIVAL_DELAY_LABELS), timeout=60_000)
    timing = page.evaluate("window.clickToAnswer")
    return timing["shown"] - timing["clicked"]


def answer_requests(page: Page) -> list[str]:
    """The URLs the page asks for answers with, as it asks them."""
    urls = []
    page.on("request", lambda r: urls.append(r.url) if f"{PREDICT}/response/" in r.url else None)
    return urls


def record_click_to_answer(name: str, timings_ms: list[float]) -> None:
    timings = sorted(timings_ms)
    line = (f"{name}: click -> answer shown in Chromium, {len(timings)} clicks: "
            f"p50 {timings[len(timings) // 2]:.0f} ms, max {timings[-1]:.0f} ms")
    print(line)
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "click_to_answer.txt", "a") as figures:
        figures.write(line + "\n")


def test_the_page_long_polls_and_shows_the_answer_once_stored(page):
    asked = answer_requests(page)
    timings = [click_to_answer_ms(page) for _ in range(CLICKS)]
    record_click_to_answer("long polling", timings)
    assert asked and all(url.endswith(f"?wait={MAX_WAIT_S}") for url in asked), asked


def test_the_page_falls_back_to_polling_when_long_polls_fail(page):
    page.route(lambda url: "?wait=" in url, lambda route: route.abort())
    asked = answer_requests(page)
    timings = [click_to_answer_ms(page) for _ in range(CLICKS // 2)]
    record_click_to_answer("polling after a failed long poll", timings)
    polls = [url for url in asked if "?wait=" not in url]
    assert polls, "the page polls once its long poll failed"
    expect(page.locator("#status")).to_have_text("")


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
