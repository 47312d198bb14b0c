// Posts the form, then waits for the streaming job's answer. No libraries: the page works offline.
"use strict";

const LONG_POLL_S = 20; // the response endpoint's cap
const POLL_INTERVAL_MS = 500;
const ANSWER_TIMEOUT_MS = 60000; // a model roll-out restarts the stream; answers wait in Kafka meanwhile

const main = document.querySelector("main");
const form = document.getElementById("prediction-form");
const statusLine = document.getElementById("status");
const predictionBox = document.getElementById("prediction");
let routes = [];

function fillList(id, values) {
  const list = document.getElementById(id);
  list.replaceChildren(...[...new Set(values)].sort().map((value) => new Option(value, value)));
}

function refreshSuggestions() {
  const origin = form.Origin.value.trim().toUpperCase();
  const dest = form.Dest.value.trim().toUpperCase();
  const fromOrigin = routes.filter((r) => !origin || r.Origin === origin);
  fillList("origins", routes.map((r) => r.Origin));
  fillList("destinations", fromOrigin.map((r) => r.Dest));
  fillList("carriers", fromOrigin.filter((r) => !dest || r.Dest === dest).flatMap((r) => r.Carriers));
}

async function loadRoutes() {
  try {
    const response = await fetch(main.dataset.routesUrl);
    if (response.ok) {
      routes = (await response.json()).routes;
      refreshSuggestions();
    }
  } catch (error) {
    // Suggestions are a convenience; the form works without them.
  }
}

function showErrors(errors) {
  for (const input of form.querySelectorAll("input")) {
    const message = errors[input.name];
    input.setAttribute("aria-invalid", message ? "true" : "false");
    document.getElementById(`${input.name}-error`).textContent = message ? `${input.name} ${message}` : "";
  }
}

function element(tag, className = "", text = "") {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

// One row per bucket: its label, a horizontal bar as wide as its probability, the percentage.
// The predicted bucket's row is highlighted and says so in text, for screen readers too.
function bucketRow(bucket, predicted) {
  const percent = (bucket.Probability * 100).toFixed(1);
  const row = document.createElement("tr");
  row.dataset.bucket = bucket.Bucket;
  row.className = predicted ? "bucket predicted" : "bucket";

  const header = element("th");
  header.scope = "row";
  header.id = `bucket-${bucket.Bucket}-label`;
  header.append(element("span", "bucket-label", bucket.Label));
  if (predicted) header.append(element("span", "predicted-marker", "predicted"));

  const meter = element("div", "meter");
  meter.setAttribute("role", "meter");
  meter.setAttribute("aria-labelledby", header.id);
  meter.setAttribute("aria-valuemin", "0");
  meter.setAttribute("aria-valuemax", "100");
  meter.setAttribute("aria-valuenow", percent);
  meter.setAttribute("aria-valuetext", `${percent}%`);
  const fill = element("div", "meter-fill");
  fill.style.width = `${bucket.Probability * 100}%`;
  meter.append(fill);
  const bar = element("td", "bar");
  bar.append(meter);

  row.append(header, bar, element("td", "percent", `${percent}%`));
  return row;
}

const MAX_REASONS = 3;
const WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

// A model input's value in words, from the answer (which repeats the request's fields).
function describeInput(feature, answer) {
  const value = answer[feature];
  switch (feature) {
    case "DepDelay":
      if (value > 0) return `Departure delay of ${value} min`;
      return value < 0 ? `Departure ${-value} min early` : "Departure on time";
    case "Carrier": return `Carrier ${value}`;
    case "Origin": return `Departing from ${value}`;
    case "Dest": return `Arriving at ${value}`;
    case "Route": return `The route ${value}`;
    case "Distance": return `A distance of ${value} miles`;
    case "DayOfMonth": return `Day ${value} of the month`;
    case "DayOfWeek": return `A ${WEEKDAYS[value - 1]}`;
    case "DayOfYear": return `Day ${value} of the year`;
    default: return `${feature} ${value}`;
  }
}

// "Departure delay of 45 min: +38 points toward Very late (30+ min)": a contribution to the
// predicted bucket's probability, in percentage points.
function reasonText(feature, contribution, answer) {
  const points = Math.abs(contribution) * 100;
  const size = points >= 1 ? points.toFixed(0) : points.toFixed(1);
  const direction = contribution >= 0 ? `+${size} points toward` : `−${size} points away from`;
  return `${describeInput(feature, answer)}: ${direction} ${answer.PredictionLabel}`;
}

// The inputs that pushed the predicted bucket's probability most, either way (answers stored
// before explanations existed have none, and show none).
function showExplanation(answer) {
  const box = document.getElementById("explanation");
  const explanation = answer.Explanation;
  box.hidden = !explanation;
  if (!explanation) return;
  // Features come largest contribution first.
  const strongest = explanation.Features.map((feature, i) => [feature, explanation.Contributions[i]])
    .filter(([, contribution]) => Math.abs(contribution) >= 0.0005).slice(0, MAX_REASONS);
  document.getElementById("reasons").replaceChildren(...strongest.map(([feature, contribution]) =>
    element("li", contribution >= 0 ? "reason toward" : "reason away",
            reasonText(feature, contribution, answer))));
  document.getElementById("base-rate").textContent =
    `Before looking at this flight, the model gives ${answer.PredictionLabel} ` +
    `${(explanation.BaseProbability * 100).toFixed(0)}%.`;
}

// Challenger models score the same request in the shadow of the current one; shown small.
function showShadow(prediction) {
  const shadow = prediction.Shadow || [];
  const line = document.getElementById("shadow-models");
  const models = shadow.map((s) => `${s.ModelVersion} predicts ${s.PredictionLabel}`);
  line.textContent = `Also scored by ${shadow.length} challenger model${shadow.length === 1 ? "" : "s"}. ` +
    `${models.join("; ")}.`;
  line.hidden = shadow.length === 0;
}

function showPrediction(prediction) {
  document.getElementById("prediction-label").textContent = prediction.PredictionLabel;
  document.querySelector("#probabilities tbody").replaceChildren(
    ...prediction.Probabilities.map((p) => bucketRow(p, p.Bucket === prediction.Prediction)));
  document.getElementById("model-version").textContent = prediction.ModelVersion;
  const scoredAt = document.getElementById("scored-at");
  scoredAt.dateTime = prediction.ScoredAt;
  scoredAt.textContent = new Date(prediction.ScoredAt).toLocaleString();
  showExplanation(prediction);
  showShadow(prediction);
  predictionBox.hidden = false;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Long polling: the response endpoint holds each request until the answer is stored, so the page
// shows it as soon as it exists. Should a long poll fail (a proxy cutting held requests) or come
// back early with no answer (a server that does not hold), the page polls every 500 ms instead.
async function waitForAnswer(id) {
  const url = main.dataset.responseUrl.replace("REQUEST_ID", id);
  const started = Date.now();
  let longPolling = true;
  while (Date.now() - started < ANSWER_TIMEOUT_MS) {
    const asked = Date.now();
    try {
      const response = await fetch(longPolling ? `${url}?wait=${LONG_POLL_S}` : url);
      const body = await response.json();
      if (response.ok && body.status === "OK") {
        statusLine.textContent = "";
        showPrediction(body.prediction);
        form.querySelector("button").disabled = false;
        return;
      }
      if (!response.ok) throw new Error(body.reason || `HTTP ${response.status}`);
      if (longPolling && Date.now() - asked >= LONG_POLL_S * 500) continue; // held: ask again
      longPolling = false;
    } catch (error) {
      statusLine.textContent = `Still waiting (${error.message}); retrying…`;
      longPolling = false;
    }
    await sleep(POLL_INTERVAL_MS);
  }
  statusLine.textContent = "No answer yet. Is the prediction stream running? Request id: " + id;
  form.querySelector("button").disabled = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showErrors({});
  predictionBox.hidden = true;
  statusLine.textContent = "Sending…";
  form.querySelector("button").disabled = true;
  try {
    const response = await fetch(form.action, { method: "POST", body: new FormData(form) });
    const body = await response.json();
    if (response.ok) {
      statusLine.textContent = "Waiting for the prediction…";
      waitForAnswer(body.id);
      return;
    }
    if (body.errors) {
      showErrors(body.errors);
      statusLine.textContent = "Please correct the highlighted fields.";
    } else {
      statusLine.textContent = body.reason || `The request failed (HTTP ${response.status}).`;
    }
  } catch (error) {
    statusLine.textContent = `The server could not be reached: ${error.message}`;
  }
  form.querySelector("button").disabled = false;
});

form.Origin.addEventListener("input", refreshSuggestions);
form.Dest.addEventListener("input", refreshSuggestions);
loadRoutes();
