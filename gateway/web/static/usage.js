// The usage page's two charts, drawn from the figures the page also shows as tables
// (#usage-data, JSON written by the server). No inline script: the page works under a
// strict script-src 'self'.
(function () {
  "use strict";
  var source = document.getElementById("usage-data");
  if (!source || typeof Chart === "undefined") {
    return;
  }
  var data = JSON.parse(source.textContent);
  var palette = ["#000091", "#18753c", "#b34000", "#6a6af4", "#a94645", "#695240"];
  var colour = function (i) { return palette[i % palette.length]; };

  new Chart(document.getElementById("chart-interfaces"), {
    type: "line",
    data: {
      labels: data.days,
      datasets: data.interfaces.map(function (series, i) {
        return { label: series.interface, data: series.sessions,
                 borderColor: colour(i), backgroundColor: colour(i), tension: 0.2 };
      })
    },
    options: { animation: false, responsive: true,
               scales: { y: { beginAtZero: true, title: { display: true, text: "sessions" } } } }
  });

  new Chart(document.getElementById("chart-historic"), {
    type: "bar",
    data: {
      labels: data.historic.map(function (row) { return row.software; }),
      datasets: [{ label: "BAL encore sur la plateforme historique",
                   data: data.historic.map(function (row) { return row.bals; }),
                   backgroundColor: colour(2) }]
    },
    options: { animation: false, responsive: true, indexAxis: "y",
               scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } }
  });
  document.documentElement.dataset.chartsDrawn = "yes";
})();
