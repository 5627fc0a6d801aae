// flow's dashboard behaviour: theme, confirmations, auto-refresh, live log tail, trigger form
// checks. No inline scripts (the Content-Security-Policy forbids them); text is inserted as
// text, never as HTML.
(function () {
  "use strict";
  var root = document.documentElement;
  var stored = localStorage.getItem("flow-theme");
  if (stored === "dark" || (!stored && window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches)) {
    root.classList.add("dark");
  }
  document.addEventListener("DOMContentLoaded", function () {
    var toggle = document.getElementById("theme-toggle");
    if (toggle) toggle.addEventListener("click", function () {
      root.classList.toggle("dark");
      localStorage.setItem("flow-theme", root.classList.contains("dark") ? "dark" : "light");
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
    // Auto-refresh of lists and the grid, unless the user is typing.
    var refresh = document.querySelector("[data-refresh]");
    if (refresh) {
      var secs = parseInt(refresh.getAttribute("data-refresh"), 10) || 10;
      setInterval(function () {
        var a = document.activeElement;
        if (a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA" || a.tagName === "SELECT")) return;
        window.location.reload();
      }, secs * 1000);
    }
    document.querySelectorAll("select[data-autosubmit]").forEach(function (sel) {
      sel.addEventListener("change", function () { sel.form.submit(); });
    });
    // Ctrl+K (or Cmd+K) from any page: the DAG search in the header.
    var search = document.getElementById("dag-search");
    if (search) document.addEventListener("keydown", function (e) {
      if ((e.ctrlKey || e.metaKey) && (e.key === "k" || e.key === "K")) {
        e.preventDefault();
        search.focus();
        search.select();
      }
    });
    gridCells();
    tailLog();
    checkTriggerForm();
  });

  // Grid cells carry only their state (a 100 x 200 grid stays small); the task instance a
  // cell stands for comes from its row and column.
  function gridCells() {
    var grid = document.getElementById("grid");
    if (!grid) return;
    var runs = [].map.call(grid.querySelectorAll("tr.bars td[data-run]"), function (td) { return td.getAttribute("data-run"); });
    var base = grid.getAttribute("data-base");
    function target(td) {
      var tr = td.parentElement;
      var col = [].indexOf.call(tr.children, td) - 1;
      return { run: runs[col], task: tr.getAttribute("data-task") };
    }
    grid.addEventListener("click", function (e) {
      var td = e.target.closest("td.cell");
      if (!td) return;
      var t = target(td);
      window.location.href = base + t.run + "/tasks/" + t.task;
    });
    grid.addEventListener("mouseover", function (e) {
      var td = e.target.closest("td.cell");
      if (!td || td.title) return;
      var t = target(td);
      td.title = decodeURIComponent(t.task) + " · " + decodeURIComponent(t.run) + " · " + td.getAttribute("data-state");
    });
  }

  function appendLines(log, lines) {
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    lines.forEach(function (l) {
      var line = document.createElement("span");
      line.className = "line " + l.stream;
      var time = document.createElement("time");
      time.textContent = l.at;
      line.appendChild(time);
      line.appendChild(document.createTextNode(" "));
      l.spans.forEach(function (s) {
        var span = document.createElement("span");
        if (s[0]) span.className = s[0];
        span.textContent = s[1];
        line.appendChild(span);
      });
      log.appendChild(line);
      log.appendChild(document.createTextNode("\n"));
    });
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function showState(state) {
    var el = document.getElementById("ti-state");
    if (el && el.textContent !== state) {
      el.textContent = state;
      el.className = "pill st-" + state;
    }
  }

  // Live tail: server-sent events while the try runs; polling where EventSource is missing.
  function tailLog() {
    var log = document.getElementById("log");
    if (!log || log.getAttribute("data-live") !== "true") return;
    var next = log.getAttribute("data-next") || "0";
    if (window.EventSource) {
      var source = new EventSource(log.getAttribute("data-stream") + "&after=" + encodeURIComponent(next));
      source.addEventListener("lines", function (e) {
        var data = JSON.parse(e.data);
        var empty = document.getElementById("log-empty");
        if (empty) empty.remove();
        appendLines(log, data.lines);
      });
      source.addEventListener("state", function (e) { showState(e.data); });
      source.addEventListener("end", function () { source.close(); });
      return;
    }
    var src = log.getAttribute("data-src");
    function poll() {
      fetch(src + "&after=" + encodeURIComponent(next), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          if (data.lines.length) {
            var empty = document.getElementById("log-empty");
            if (empty) empty.remove();
            appendLines(log, data.lines);
          }
          next = String(data.next);
          var state = document.getElementById("ti-state");
          if (state && state.textContent !== data.state) {
            state.textContent = data.state;
            state.className = "pill st-" + data.state;
          }
          if (data.state === "running" || data.state === "queued" || data.state === "scheduled") {
            setTimeout(poll, 1000);
          }
        })
        .catch(function () { setTimeout(poll, 3000); });
    }
    poll();
  }

  // The trigger form checks typed params before submitting (the server checks again).
  function checkTriggerForm() {
    var form = document.getElementById("trigger-form");
    if (!form) return;
    form.addEventListener("submit", function (e) {
      var problems = [];
      form.querySelectorAll("[data-kind]").forEach(function (el) {
        var kind = el.getAttribute("data-kind"), v = el.value.trim();
        if (!v) return;
        if (kind === "object" || kind === "array") {
          try { JSON.parse(v); } catch (err) { problems.push(el.name.replace("param.", "") + " must be JSON"); }
        }
        if (kind === "integer" && !/^-?\d+$/.test(v)) problems.push(el.name.replace("param.", "") + " must be an integer");
      });
      var raw = form.querySelector("textarea[name=conf]");
      if (raw && raw.value.trim()) {
        try {
          var parsed = JSON.parse(raw.value);
          if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) problems.push("conf must be a JSON object");
        } catch (err) { problems.push("conf is not valid JSON"); }
      }
      if (problems.length) { e.preventDefault(); window.alert(problems.join("\n")); }
    });
  }
})();
