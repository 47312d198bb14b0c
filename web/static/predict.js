// Posts the form, then polls for the streaming job's answer. No libraries: the page works offline.
"use strict";

const POLL_INTERVAL_MS = 500;
const POLL_TIMEOUT_MS = 60000; // a model roll-out restarts the stream; answers wait in Kafka meanwhile

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

function showPrediction(prediction) {
  document.getElementById("prediction-label").textContent = prediction.PredictionLabel;
  const rows = prediction.Probabilities.map((p) => {
    const row = document.createElement("tr");
    row.className = p.Bucket === prediction.Prediction ? "chosen" : "";
    const percent = (p.Probability * 100).toFixed(1);
    row.innerHTML = `<td></td><td>${percent}%</td><td style="width:50%"><div class="bar" style="width:${percent}%"></div></td>`;
    row.firstChild.textContent = p.Label;
    return row;
  });
  document.querySelector("#probabilities tbody").replaceChildren(...rows);
  document.getElementById("model-version").textContent =
    `Model ${prediction.ModelVersion}, scored at ${prediction.ScoredAt}`;
  predictionBox.hidden = false;
}

async function poll(id, started) {
  const url = main.dataset.responseUrl.replace("REQUEST_ID", id);
  try {
    const response = await fetch(url);
    const body = await response.json();
    if (response.ok && body.status === "OK") {
      statusLine.textContent = "";
      showPrediction(body.prediction);
      form.querySelector("button").disabled = false;
      return;
    }
    if (!response.ok) throw new Error(body.reason || `HTTP ${response.status}`);
  } catch (error) {
    statusLine.textContent = `Still waiting (${error.message}); retrying…`;
  }
  if (Date.now() - started > POLL_TIMEOUT_MS) {
    statusLine.textContent = "No answer yet. Is the prediction stream running? Request id: " + id;
    form.querySelector("button").disabled = false;
    return;
  }
  setTimeout(() => poll(id, started), POLL_INTERVAL_MS);
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
      poll(body.id, Date.now());
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
