// otbus live page: plain browser JavaScript, no build step.
// Connects to the bridge's /ws with the token from ?token= (or the form), subscribes to every
// channel, keeps the latest value of each tag in an ISA-95 tree, and resumes with since=<last
// event's seq> after any disconnect (since_seq), so nothing is missed while the bridge restarts,
// even when no event had arrived yet.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const stateEl = document.getElementById("state");
  const statsEl = document.getElementById("stats");
  const treeEl = document.getElementById("tree");
  const feedBody = document.querySelector("#feed tbody");
  const recsBody = document.querySelector("#recs tbody");
  const form = document.getElementById("auth");
  const FEED_ROWS = 60;
  // The feed gets at most FEED_ROWS_PER_DRAW new rows, at most every FEED_EVERY_MS; the tree is
  // drawn every frame. Each new row moves every row below it, so the browser paints the whole
  // table again: at a thousand events a second that painting was most of the page's work and
  // held up the frames behind it (INSERT -> drawn p99 50-57 ms with 20 rows each frame, 27-30
  // ms with 10 rows ten times a second, in the benchmark). Nobody reads a thousand rows a
  // second; every event still updates its tag, is counted and has its latency taken.
  const FEED_ROWS_PER_DRAW = 10;
  const feedParam = Number(params.get("feed_every_ms"));  // ?feed_every_ms=: tests, or 0 for none
  const FEED_EVERY_MS =
    params.has("feed_every_ms") && Number.isFinite(feedParam) && feedParam >= 0 ? Math.min(feedParam, 60000) : 100;

  // What tests and tools read: window.otbusLive.
  const live = {
    state: "connecting",
    received: 0,
    connects: 0,
    lastId: null,
    lastSeq: null,       // where to resume: the last event's seq, or the subscription's start
    values: {},          // subject -> latest value
    seen: new Map(),     // event id -> Date.now() when shown (the last 20000)
    latencies: [],       // ms from event time to shown, last 10000
    arrivals: [],        // ms from event time to its frame's arrival, last 10000
    closes: [],          // [code, reason] of each close
  };
  window.otbusLive = live;

  let token = params.get("token") || sessionStorage.getItem("otbus.token") || "";
  let ws = null;
  let retry = 250;
  const tree = new Map();  // path -> {li, valueEl}

  function setState(s, detail) {
    live.state = s;
    stateEl.textContent = detail ? `${s}: ${detail}` : s;
    stateEl.className = `state ${s}`;
    stateEl.dataset.state = s;
  }

  function wsUrl() {
    const u = new URL("ws", location.href);
    u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    u.search = new URLSearchParams({ token }).toString();
    return u.toString();
  }

  function connect() {
    if (!token) {
      form.hidden = false;
      setState("closed", "enter a token");
      return;
    }
    setState(live.lastSeq !== null ? "resuming" : "connecting");
    ws = new WebSocket(wsUrl());
    ws.onopen = () => {
      live.connects += 1;
      const sub = { op: "subscribe" };
      if (live.lastSeq !== null) sub.since_seq = live.lastSeq;
      ws.send(JSON.stringify(sub));
    };
    ws.onmessage = (m) => onFrame(JSON.parse(m.data));
    ws.onclose = (e) => {
      live.closes.push([e.code, e.reason]);
      if (e.code === 4401) {
        setState("closed", e.reason || "bad token");
        form.hidden = false;
        return;
      }
      setState("connecting", `closed ${e.code}${e.reason ? " " + e.reason : ""}; retrying`);
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 5000);
    };
  }

  // Frames only queue events; the page is drawn at most once per animation frame, so a burst of
  // events costs one layout, and "latency" is measured when an event is actually drawn.
  let pending = [];
  let scheduled = false;
  let feedRows = [];   // [event, value, latency] of the newest events not yet in the feed
  const fresh = new Map();  // leaf -> when it was highlighted

  function onFrame(f) {
    if (f.op === "subscribed") {
      retry = 250;
      if (live.lastSeq === null) live.lastSeq = f.seq;
      setState("live");
    } else if (f.op === "events") {
      const now = Date.now();
      for (const e of f.events) {
        e.t = Date.parse(e.time);  // parsed once: render uses it again
        live.arrivals.push(now - e.t);
      }
      if (live.arrivals.length > 12000) live.arrivals.splice(0, live.arrivals.length - 10000);
      if (f.events.length) {
        const last = f.events[f.events.length - 1];
        live.lastId = last.id;
        live.lastSeq = last.seq;
      }
      pending.push(...f.events);
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(render);
        setTimeout(render, 250);  // rAF does not run in hidden tabs
      }
    } else if (f.op === "error") {
      if (f.code === "unknown_since") {  // the cursor is not in this feed: start afresh
        live.lastSeq = null;
        ws.send(JSON.stringify({ op: "subscribe" }));
      } else {
        console.warn("otbus bridge error", f);
      }
    }
  }

  function render() {
    if (!scheduled) return;
    scheduled = false;
    const events = pending;
    pending = [];
    const now = Date.now();
    const changed = new Map();  // path -> [value, unit]
    events.forEach((e) => {
      live.received += 1;
      live.seen.set(e.id, now);
      if (live.seen.size > 20000) live.seen.delete(live.seen.keys().next().value);
      const lat = now - e.t;
      live.latencies.push(lat);
      if (e.channel === "otbus_events") {
        const d = e.data || {};
        const value = "value" in d ? d.value : d;
        if (e.subject) {
          live.values[e.subject] = value;
          changed.set(e.subject, [value, d.unit]);
        }
        feedRows.push([e, value, lat]);
      } else {
        addRecommendation(e, e.data || {}, lat);
      }
    });
    if (live.latencies.length > 10000) live.latencies.splice(0, live.latencies.length - 10000);
    for (const [path, [value, unit]] of changed) setValue(path, value, unit, now);
    for (const [leaf, t] of fresh) {
      if (now - t > 600) {
        leaf.li.classList.remove("fresh");
        fresh.delete(leaf);
      }
    }
    if (feedRows.length > FEED_ROWS_PER_DRAW) feedRows.splice(0, feedRows.length - FEED_ROWS_PER_DRAW);
    if (feedRows.length) drawFeed();
    if (events.length) drawStats();
  }

  // `draw` at once if `every` ms have passed since it last ran, else by a timer when they have:
  // what was held back is drawn even if no further event comes.
  function throttled(every, draw) {
    let at = -Infinity;
    let timer = null;
    const run = () => {
      if (timer !== null) return;  // the timer draws what is there when it fires
      const wait = at + every - performance.now();
      if (wait > 0) {
        timer = setTimeout(() => { timer = null; run(); }, wait);
        return;
      }
      at = performance.now();
      draw();
    };
    return run;
  }

  const drawFeed = throttled(FEED_EVERY_MS, () => {
    for (const [e, value, lat] of feedRows) {
      addRow(feedBody, [fmtTime(e.time), e.type, e.subject || "", fmtValue(value), `${lat} ms`]);
    }
    feedRows = [];
  });
  // a latency summary (a sort of the last 1,000) twice a second is plenty to read
  const drawStats = throttled(500, () => { statsEl.textContent = `${live.received} events` + latencySummary(); });

  function setValue(path, value, unit, now) {
    let leaf = tree.get(path);
    if (!leaf) leaf = makeLeaf(path);
    leaf.valueEl.textContent = fmtValue(value) + (unit ? ` ${unit}` : "");
    leaf.li.classList.add("fresh");
    fresh.set(leaf, now);
  }

  function makeLeaf(path) {
    const parts = path.split("/");
    let parent = treeEl.querySelector(":scope > ul") || treeEl.appendChild(document.createElement("ul"));
    let prefix = "";
    for (let i = 0; i < parts.length - 1; i++) {
      prefix += (i ? "/" : "") + parts[i];
      let node = tree.get(prefix + "/");
      if (!node) {
        const li = document.createElement("li");
        const label = document.createElement("span");
        label.className = "node";
        label.textContent = parts[i];
        const ul = document.createElement("ul");
        li.append(label, ul);
        insertSorted(parent, li, parts[i]);
        node = { li, ul };
        tree.set(prefix + "/", node);
      }
      parent = node.ul;
    }
    const li = document.createElement("li");
    li.className = "leaf";
    li.dataset.path = path;
    const name = document.createElement("span");
    name.textContent = parts[parts.length - 1];
    const valueEl = document.createElement("span");
    valueEl.className = "value";
    li.append(name, valueEl);
    insertSorted(parent, li, parts[parts.length - 1]);
    const leaf = { li, valueEl };
    tree.set(path, leaf);
    return leaf;
  }

  function insertSorted(ul, li, key) {
    li.dataset.key = key;
    for (const other of ul.children) {
      if (other.dataset.key > key) return ul.insertBefore(li, other);
    }
    ul.appendChild(li);
  }

  function addRecommendation(e, r, lat) {
    const id = r.recommendation_id || e.id;
    let tr = recsBody.querySelector(`tr[data-id="${CSS.escape(id)}"]`);
    const cells = [fmtTime(e.time), r.equipment_id || e.subject || "", r.severity || "", r.recommended_action || e.type,
      r.status || "", `${lat} ms`];
    if (!tr) {
      tr = addRow(recsBody, cells);
      tr.dataset.id = id;
    } else {
      cells.forEach((c, i) => { tr.children[i].textContent = c; });
    }
    tr.children[2].className = `sev-${r.severity || ""}`;
  }

  function addRow(body, cells) {
    const tr = document.createElement("tr");
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = c;
      if (i === 2 && body === feedBody) td.className = "subject";
      tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
    while (body.children.length > FEED_ROWS) body.removeChild(body.lastChild);
    return tr;
  }

  // Local wall-clock time with milliseconds. Formatted by hand: toLocaleTimeString costs tens of
  // microseconds a call, which at a thousand events a second was most of the page's CPU time.
  const pad2 = (n) => (n < 10 ? "0" : "") + n;
  function fmtTime(t) {
    const d = new Date(t);
    const ms = d.getMilliseconds();
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}.${ms < 10 ? "00" : ms < 100 ? "0" : ""}${ms}`;
  }

  function fmtValue(v) {
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
    if (typeof v === "object" && v !== null) return JSON.stringify(v).slice(0, 80);
    return String(v);
  }

  function latencySummary() {
    const l = live.latencies;
    if (!l.length) return "";
    const s = l.slice(-1000).sort((a, b) => a - b);
    return ` · latency p50 ${s[Math.floor(s.length * 0.5)]} ms, p99 ${s[Math.floor(s.length * 0.99)]} ms`;
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem("otbus.token", token);
    form.hidden = true;
    connect();
  });

  connect();
})();
