// api-gateway-mcp console: live decisions on the Decisions page. Everything else works
// without this script. Text is set with textContent only (never as HTML).
"use strict";
(function () {
  if (document.body.dataset.page !== "decisions" || !window.EventSource) return;
  var body = document.querySelector("#decisions tbody");
  var state = document.getElementById("stream-state");
  var dropped = document.getElementById("dropped");
  var empty = document.getElementById("decisions-empty");
  var seen = {};
  Array.prototype.forEach.call(body.rows, function (r) { seen[r.dataset.key] = true; });
  function cell(row, text, cls) {
    var td = row.insertCell(-1);
    td.textContent = text == null ? "" : String(text);
    if (cls) td.className = cls;
    return td;
  }
  var es = new EventSource("/console/api/decisions");
  es.onopen = function () { state.textContent = "Live."; };
  es.onerror = function () { state.textContent = "Reconnecting…"; };
  es.addEventListener("dropped", function (e) {
    var n = JSON.parse(e.data).dropped || 0;
    dropped.textContent = String(Number(dropped.textContent) + n);
  });
  es.addEventListener("decision", function (e) {
    var d = JSON.parse(e.data);
    var key = d.request_id + ":" + d.kind;
    if (seen[key]) return;
    seen[key] = true;
    if (empty) { empty.remove(); empty = null; }
    var row = body.insertRow(0);
    row.dataset.requestId = d.request_id;
    row.className = "fresh";
    cell(row, d.ts);
    var kind = cell(row, "");
    var badge = document.createElement("span");
    badge.className = "badge " + d.kind;
    badge.textContent = d.kind;
    kind.appendChild(badge);
    cell(row, d.principal);
    cell(row, [d.door, d.api, d.method, d.path].join(" "));
    cell(row, d.reason);
    cell(row, d.rule, "rule");
    var link = document.createElement("a");
    link.href = "/console/explain?request_id=" + encodeURIComponent(d.request_id);
    link.className = "explain";
    link.textContent = "explain";
    cell(row, "").appendChild(link);
  });
})();
