// Follows a running job: polls its progress endpoint, updates the page, and reloads it once
// when the job finishes so the candidates, errors and receipts show.
(function () {
  "use strict";
  var box = document.getElementById("job");
  if (!box || box.dataset.final === "true") return;
  var url = "/ui/jobs/" + encodeURIComponent(box.dataset.jobId) + "/progress.json";
  var bar = document.getElementById("job-progress");
  var percent = document.getElementById("job-percent");
  var status = document.getElementById("job-status");
  var phase = document.getElementById("job-phase");
  var attempts = document.getElementById("job-attempts");
  var note = document.getElementById("job-live-note");

  var candidates = document.querySelector("#candidates tbody");

  function cell(row, text, header) {
    var element = document.createElement(header ? "th" : "td");
    if (header) element.scope = "row";
    element.textContent = text === null || text === undefined ? "" : String(text);
    row.appendChild(element);
  }

  function showCandidates(list) {
    // Only once one has finished: the reload at the end shows their criteria in full.
    if (!list.length || candidates.children.length === list.length &&
        candidates.querySelector("td[colspan]") === null) return;
    candidates.textContent = "";
    list.forEach(function (candidate, index) {
      var row = document.createElement("tr");
      cell(row, index + 1, true);
      cell(row, candidate.method);
      cell(row, candidate.verdict);
      cell(row, candidate.gate_seconds == null ? candidate.seconds :
        candidate.seconds + " (gate " + candidate.gate_seconds + ")");
      cell(row, candidate.error);
      candidates.appendChild(row);
    });
  }

  function show(job) {
    var shown = Math.round(job.progress * 100) + "%";
    bar.value = job.progress;
    bar.textContent = shown;
    if (percent.textContent !== shown) percent.textContent = shown;
    status.textContent = job.status;
    status.className = "status status-" + job.status;
    phase.textContent = job.phase || "waiting for a worker";
    attempts.textContent = job.attempts;
    showCandidates(job.candidates);
  }

  function poll() {
    fetch(url, {credentials: "same-origin", cache: "no-store"})
      .then(function (answer) {
        if (!answer.ok) throw new Error("the console answered " + answer.status);
        return answer.json();
      })
      .then(function (job) {
        show(job);
        if (job.final) { window.location.reload(); return; }
        window.setTimeout(poll, 500);
      })
      .catch(function (error) {
        note.textContent = "Could not follow the job (" + error.message + "); retrying.";
        window.setTimeout(poll, 3000);
      });
  }

  window.setTimeout(poll, 300);
})();
