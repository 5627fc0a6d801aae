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
        // Not while the user moves through the grid with the keyboard.
        if (a && a.id === "grid") return;
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
    timezoneSettings();
    tailLog();
    checkTriggerForm();
  });

  // Grid cells carry only their state class (a 100 x 200 grid stays small); the task instance a
  // cell stands for comes from its row and column. A click (or Enter) opens the details
  // panel beside the grid without leaving the page; the URL keeps the selection.
  function gridCells() {
    var grid = document.getElementById("grid");
    if (!grid) return;
    var runs = [].map.call(grid.querySelectorAll("tr.bars td[data-run]"), function (td) { return td.getAttribute("data-run"); });
    var panel = document.getElementById("details");
    var layout = panel && panel.parentElement;
    var pageUrl = grid.getAttribute("data-url");
    var detailsUrl = grid.getAttribute("data-details");
    var dagKey = "flow-grid-collapsed:" + detailsUrl;
    var cursor = null;

    function stateOf(td) {
      var m = /(?:^|\s)st-(\S+)/.exec(td.className);
      return m ? m[1] : "none";
    }
    function target(td) {
      var tr = td.parentElement;
      var col = [].indexOf.call(tr.children, td) - 1;
      return { run: runs[col], task: tr.getAttribute("data-task"), col: col };
    }
    function query(run, task) {
      return "&run_id=" + run + (task ? "&task_id=" + task : "");
    }
    function open(run, task, el) {
      if (!panel) return;
      grid.querySelectorAll(".selected").forEach(function (x) { x.classList.remove("selected"); });
      if (el) el.classList.add("selected");
      fetch(detailsUrl + "?" + query(run, task).slice(1), { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
        .then(function (html) {
          // Our own server-rendered, escaped fragment (the same HTML the page embeds).
          panel.innerHTML = html;
          layout.classList.add("with-panel");
          wirePanel();
          history.replaceState(null, "", pageUrl + query(run, task));
        })
        .catch(function () { window.location.href = pageUrl + query(run, task); });
    }
    function close() {
      if (!panel) return;
      panel.innerHTML = "";
      layout.classList.remove("with-panel");
      history.replaceState(null, "", pageUrl);
    }
    function wirePanel() {
      var x = document.getElementById("details-close");
      if (x) x.addEventListener("click", function (e) { e.preventDefault(); close(); grid.focus(); });
      panel.querySelectorAll("form[data-confirm]").forEach(function (form) {
        form.addEventListener("submit", function (e) {
          if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
        });
      });
    }
    wirePanel();
    function setCursor(td) {
      if (cursor) cursor.classList.remove("cursor");
      cursor = td;
      if (!td) return;
      td.classList.add("cursor");
      td.scrollIntoView({ block: "nearest", inline: "nearest" });
      var t = target(td);
      td.title = td.title || (decodeURIComponent(t.task) + " · " + decodeURIComponent(t.run) + " · " + stateOf(td));
    }
    grid.addEventListener("click", function (e) {
      if (e.target.closest("button.toggle-group")) return;
      var head = e.target.closest("th.run a, tr.bars a");
      if (head) {
        e.preventDefault();
        var col = head.closest("[data-run]");
        open(col.getAttribute("data-run"), null, col);
        return;
      }
      var td = e.target.closest("tbody td");
      if (!td) return;
      var t = target(td);
      setCursor(td);
      open(t.run, t.task, td);
    });
    grid.addEventListener("mouseover", function (e) {
      var td = e.target.closest("tbody td");
      if (!td || td.title) return;
      var t = target(td);
      td.title = decodeURIComponent(t.task) + " · " + decodeURIComponent(t.run) + " · " + stateOf(td);
    });

    // Keyboard: arrows move a cursor over the visible cells, Enter opens, Esc closes.
    function visibleRows() {
      return [].filter.call(grid.querySelectorAll("tbody tr"), function (tr) { return !tr.hidden; });
    }
    grid.addEventListener("keydown", function (e) {
      var rows = visibleRows();
      if (!rows.length || !runs.length) return;
      if (e.key === "Escape") { close(); return; }
      if (!cursor || cursor.parentElement.hidden) {
        if (["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Enter", " "].indexOf(e.key) < 0) return;
        e.preventDefault();
        setCursor(rows[0].children[rows[0].children.length - 1]);
        return;
      }
      var tr = cursor.parentElement;
      var r = rows.indexOf(tr), c = target(cursor).col;
      switch (e.key) {
        case "ArrowUp": r = Math.max(0, r - 1); break;
        case "ArrowDown": r = Math.min(rows.length - 1, r + 1); break;
        case "ArrowLeft": c = Math.max(0, c - 1); break;
        case "ArrowRight": c = Math.min(runs.length - 1, c + 1); break;
        case "Home": c = 0; break;
        case "End": c = runs.length - 1; break;
        case "Enter": case " ":
          e.preventDefault();
          var t = target(cursor);
          open(t.run, t.task, cursor);
          return;
        case "-": case "+":
          var group = tr.getAttribute("data-group");
          if (group) { e.preventDefault(); toggleGroup(group, e.key === "-"); }
          return;
        default: return;
      }
      e.preventDefault();
      setCursor(rows[r].children[c + 1]);
    });

    // Task groups collapse to their summary row; the choice is kept per DAG.
    var collapsed = {};
    try { collapsed = JSON.parse(localStorage.getItem(dagKey) || "{}") || {}; } catch (err) { collapsed = {}; }
    function applyGroups() {
      grid.querySelectorAll("tbody tr").forEach(function (tr) {
        var groups = (tr.getAttribute("data-groups") || "").split(" ").filter(Boolean);
        tr.hidden = groups.some(function (g) { return collapsed[g]; });
        var own = tr.getAttribute("data-group");
        if (own) {
          var b = tr.querySelector("button.toggle-group");
          b.setAttribute("aria-expanded", collapsed[own] ? "false" : "true");
          b.textContent = collapsed[own] ? "▸" : "▾";
        }
      });
    }
    function toggleGroup(group, collapse) {
      if (collapse) collapsed[group] = true; else delete collapsed[group];
      localStorage.setItem(dagKey, JSON.stringify(collapsed));
      applyGroups();
    }
    grid.addEventListener("click", function (e) {
      var b = e.target.closest("button.toggle-group");
      if (!b) return;
      var group = b.closest("tr").getAttribute("data-group");
      toggleGroup(group, !collapsed[group]);
    });
    applyGroups();
  }

  // The settings page: pick the browser's own zone; the header link comes back here.
  function timezoneSettings() {
    var link = document.getElementById("tz-link");
    if (link && window.location.pathname !== "/settings") {
      link.href = "/settings?next=" + encodeURIComponent(window.location.pathname + window.location.search);
    }
    var button = document.getElementById("tz-browser");
    var select = document.getElementById("tz-select");
    if (!button || !select) return;
    var zone = window.Intl && Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (!zone) { button.hidden = true; return; }
    button.textContent = "Use my browser's zone (" + zone + ")";
    button.addEventListener("click", function () {
      select.value = zone;
      if (select.value === zone) select.form.submit();
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
