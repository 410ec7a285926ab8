// The migrations page, refreshed in place every two seconds from /ui/admin/migrations.json
// (rows the server has already worded; only text is written, never markup). No inline
// script: the page works under a strict script-src 'self'.
(function () {
  "use strict";
  var table = document.getElementById("migrations");
  var updated = document.getElementById("migrations-updated");
  var hidden = document.getElementById("migrations-hidden");
  if (!table || !updated || !window.fetch) {
    return;
  }
  var body = table.tBodies[0];
  var INTERVAL = 2000;
  var COLUMNS = ["bal", "route", "state", "progress", "messages", "bytes", "error", "timings"];

  function element(name, text, className) {
    var node = document.createElement(name);
    if (text !== undefined) { node.textContent = text; }
    if (className) { node.className = className; }
    return node;
  }

  function lines(cell, texts) {
    cell.replaceChildren();
    texts.forEach(function (text, i) {
      if (i > 0) { cell.appendChild(document.createElement("br")); }
      cell.appendChild(document.createTextNode(text));
    });
  }

  function progress(cell, now) {
    cell.replaceChildren();
    if (!now) { cell.textContent = "—"; return; }
    if (now.bar) {
      var bar = document.createElement("progress");
      if (now.max) { bar.max = now.max; bar.value = now.value; }
      cell.appendChild(bar);
      cell.appendChild(document.createElement("br"));
    }
    cell.appendChild(element("span", now.text, "hint"));
  }

  function fill(tr, row) {
    tr.dataset.bal = row.bal;
    tr.dataset.state = row.state_code;
    var cells = tr.cells;
    cells[0].textContent = row.bal;
    cells[1].textContent = row.source + " → " + row.target;
    cells[2].replaceChildren(element("strong", row.state));
    if (row.job) {
      cells[2].appendChild(document.createElement("br"));
      cells[2].appendChild(element("span", row.job, "hint"));
    }
    progress(cells[3], row.progress);
    cells[4].textContent = row.messages;
    cells[5].textContent = row.bytes;
    cells[6].textContent = row.error;
    lines(cells[7], row.timings);
  }

  function newRow() {
    var tr = document.createElement("tr");
    COLUMNS.forEach(function (name) { tr.appendChild(element("td", undefined, name)); });
    return tr;
  }

  function show(view) {
    var existing = {};
    Array.prototype.forEach.call(body.rows, function (tr) {
      if (tr.dataset.bal !== undefined) { existing[tr.dataset.bal] = tr; }
    });
    var wanted = view.rows.map(function (row) {
      var tr = Object.prototype.hasOwnProperty.call(existing, row.bal) ? existing[row.bal] : newRow();
      fill(tr, row);
      return tr;
    });
    if (wanted.length === 0) {
      var empty = element("tr", undefined, "empty");
      var cell = element("td", "Aucune migration.");
      cell.colSpan = COLUMNS.length;
      empty.appendChild(cell);
      wanted.push(empty);
    }
    body.replaceChildren.apply(body, wanted);
    if (hidden) {
      hidden.hidden = !view.hidden;
      hidden.firstElementChild.textContent = String(view.hidden);
    }
  }

  function stop(text) {
    updated.textContent = text;
    updated.className = "error";
  }

  function poll() {
    if (document.hidden) {
      window.setTimeout(poll, INTERVAL);
      return;
    }
    fetch("/ui/admin/migrations.json", {
      credentials: "same-origin", cache: "no-store", redirect: "manual",
      headers: { "Accept": "application/json" }
    }).then(function (answer) {
      if (answer.type === "opaqueredirect" || answer.status === 403) {
        stop("Session expirée ou accès refusé : rechargez la page.");
        return;
      }
      if (!answer.ok) { throw new Error(String(answer.status)); }
      return answer.json().then(function (view) {
        show(view);
        updated.className = "";
        updated.textContent = "Mis à jour à " + new Date().toLocaleTimeString("fr-FR") + ".";
        document.documentElement.dataset.migrationsUpdates =
          String(Number(document.documentElement.dataset.migrationsUpdates || 0) + 1);
        window.setTimeout(poll, INTERVAL);
      });
    }).catch(function () {
      updated.textContent = "Mise à jour impossible pour l'instant ; nouvel essai dans 2 s.";
      updated.className = "error";
      window.setTimeout(poll, INTERVAL);
    });
  }

  window.setTimeout(poll, INTERVAL);
})();
