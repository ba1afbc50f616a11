// The Monitoring page's charts (Chart.js, vendored: chart.umd.min.js). Data: the JSON in #monitoring-data.
// Every chart is kept in window.monitoringCharts by its canvas id (the browser test reads them).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("monitoring-data").textContent);
  var charts = {};
  window.monitoringCharts = charts;
  var colours = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457"];

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (!canvas) { return; }
    config.options = Object.assign({animation: false, responsive: true}, config.options || {});
    charts[id] = new Chart(canvas, config);
  }

  // Agreement over time: positive agreement with its interval as a band, sensitivity and PPV.
  document.querySelectorAll("canvas[data-series]").forEach(function (canvas) {
    var points = data.trend[canvas.dataset.series] || [];
    var labels = points.map(function (p) { return p.date; });
    var pick = function (k) { return points.map(function (p) { return p[k]; }); };
    draw(canvas.id, {
      type: "line",
      data: {labels: labels, datasets: [
        {label: "PA 95% low", data: pick("positive_agreement_low"), borderWidth: 0, pointRadius: 0, fill: false},
        {label: "PA 95% high", data: pick("positive_agreement_high"), borderWidth: 0, pointRadius: 0,
         backgroundColor: "rgba(21,101,192,0.18)", fill: "-1"},
        {label: "positive agreement", data: pick("positive_agreement"), borderColor: colours[0],
         backgroundColor: colours[0], borderWidth: 3, pointRadius: 5, order: 0},  // drawn on top
        {label: "sensitivity", data: pick("sensitivity"), borderColor: colours[2], backgroundColor: colours[2], order: 1},
        {label: "PPV", data: pick("ppv"), borderColor: colours[4], backgroundColor: colours[4], order: 1},
        {label: "floor", data: labels.map(function () { return data.floor; }), borderColor: colours[1],
         borderDash: [6, 4], pointRadius: 0}
      ]},
      options: {plugins: {title: {display: true, text: canvas.dataset.series.split("|").join(" ")}},
                scales: {y: {min: 0, max: 1}}}
    });
  });

  // Drift: adjusted p-value of each test over the evaluations (log scale), the alpha line.
  var tests = {};
  data.drift_history.forEach(function (d) {
    var key = d.model + " " + d.model_version + " " + d.test;
    (tests[key] = tests[key] || []).push({x: d.when, y: Math.max(d.p_adjusted, 1e-6)});
  });
  var times = Array.from(new Set(data.drift_history.map(function (d) { return d.when; }))).sort();
  var driftSets = Object.keys(tests).sort().map(function (key, i) {
    var byTime = {};
    tests[key].forEach(function (p) { byTime[p.x] = p.y; });
    return {label: key, data: times.map(function (t) { return byTime[t] === undefined ? null : byTime[t]; }),
            borderColor: colours[i % colours.length], backgroundColor: colours[i % colours.length]};
  });
  driftSets.push({label: "alpha", data: times.map(function () { return data.alpha; }), borderColor: "#b3261e",
                  borderDash: [6, 4], pointRadius: 0});
  draw("chart-drift", {type: "line", data: {labels: times, datasets: driftSets},
       options: {plugins: {title: {display: true, text: "Drift: adjusted p-value per test (below alpha and past the effect floor: alert)"},
                           legend: {display: driftSets.length < 16}},
                 scales: {y: {type: "logarithmic", min: 1e-6, max: 1}}}});

  // Volumes: observations per day and model version.
  var days = Array.from(new Set([].concat.apply([], Object.values(data.volumes).map(Object.keys)))).sort();
  draw("chart-volumes", {type: "bar", data: {labels: days, datasets: Object.keys(data.volumes).map(function (k, i) {
    return {label: k, data: days.map(function (d) { return data.volumes[k][d] || 0; }),
            backgroundColor: colours[i % colours.length]};
  })}, options: {plugins: {title: {display: true, text: "AI results per day"}}, scales: {x: {stacked: true}, y: {stacked: true}}}});
})();
