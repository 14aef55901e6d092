// Draws the dashboard's charts from the JSON the page embeds (#dashboard-data).
// Chart.js is vendored (static/analytics/vendor); no request leaves the site.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const colours = { done: "#12b76a", failed: "#f04438", cancelled: "#98a2b3", blue: "#2e90fa", ink: "#1d2330" };
  Chart.defaults.animation = false; // render at once: what you see is the data
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.family = "system-ui, sans-serif";
  const short = (day) => day.slice(5);

  function draw(id, config) {
    const canvas = document.getElementById(id);
    const chart = new Chart(canvas, config);
    canvas.dataset.rendered = "true";
    return chart;
  }

  draw("chart-cost", {
    data: {
      labels: data.days.map(short),
      datasets: [
        { type: "bar", label: "Cost per day", data: data.cost, backgroundColor: colours.blue, yAxisID: "y" },
        { type: "line", label: "Running total", data: data.cumulative_cost, borderColor: colours.ink, pointRadius: 0, yAxisID: "y1" },
      ],
    },
    options: { scales: { y: { beginAtZero: true }, y1: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } } } },
  });

  const statuses = Object.keys(data.status);
  draw("chart-status", {
    type: "doughnut",
    data: {
      labels: statuses,
      datasets: [{ data: statuses.map((s) => data.status[s]), backgroundColor: statuses.map((s) => colours[s] || colours.blue) }],
    },
    options: { plugins: { legend: { position: "bottom" } } },
  });

  draw("chart-p95", {
    type: "line",
    data: { labels: data.days.map(short), datasets: [{ label: "p95 (s)", data: data.p95, borderColor: colours.failed, spanGaps: true }] },
    options: { scales: { y: { beginAtZero: true } } },
  });

  const budget = data.budget;
  draw("chart-budget", {
    type: "doughnut",
    data: {
      labels: ["Spent", "Reserved", "Remaining"],
      datasets: [{ data: [budget.spent, budget.reserved, Math.max(budget.remaining, 0)], backgroundColor: [colours.blue, "#fdb022", "#e4e7ec"] }],
    },
    options: { plugins: { legend: { position: "bottom" } } },
  });

  draw("chart-queues", {
    type: "bar",
    data: {
      labels: data.queues.map((q) => `${q.queue} (${q.priority})`),
      datasets: [
        { label: "Pending", data: data.queues.map((q) => q.pending), backgroundColor: colours.blue },
        { label: "Held at the gate", data: data.queues.map((q) => q.held), backgroundColor: "#98a2b3" },
      ],
    },
    options: { indexAxis: "y", scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
  document.body.dataset.charts = "ready";
})();
