"""The live page: one HTML document with inline CSS, JS and SVG (no build step, no CDN).

It polls ``/api/state`` twice a second: the current frame (``/latest.jpg`` when a new one is
there), the score over the last minutes against the threshold, and the recent alerts with
their snapshots. ``?token=T`` in the page's URL is passed on to every request.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dn2-watch</title>
<style>
 body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#111;color:#ddd}
 header{display:flex;gap:18px;align-items:baseline;padding:10px 16px;background:#1b1b1b;
  flex-wrap:wrap}
 header h1{font-size:18px;margin:0;color:#fff}
 .badge{padding:2px 10px;border-radius:10px;font-weight:bold;background:#2a6}
 .badge.arming{background:#c80}.badge.ALERT{background:#d22}
 .badge.starting{background:#555}
 main{display:grid;grid-template-columns:minmax(320px,1fr) minmax(360px,1.2fr);gap:16px;
  padding:16px}
 #frame{width:100%;background:#000;border:1px solid #333;min-height:120px}
 svg{width:100%;background:#181818;border:1px solid #333}
 .k{color:#888}.v{color:#fff;font-variant-numeric:tabular-nums}
 ul{list-style:none;padding:0;margin:0}
 li{display:flex;gap:10px;align-items:center;border-bottom:1px solid #2a2a2a;padding:6px 0}
 li img{width:96px;border:1px solid #444}
 h2{font-size:15px;margin:14px 0 6px;color:#bbb}
</style></head><body>
<header><h1>dn2-watch</h1>
 <span class="badge starting" id="state">starting</span>
 <span><span class="k">source</span> <span class="v" id="source">-</span></span>
 <span><span class="k">score</span> <span class="v" id="score">-</span>
  <span class="k">/ threshold</span> <span class="v" id="thr">-</span>
  <span class="k">=</span> <span class="v" id="norm">-</span></span>
 <span><span class="k">fps</span> <span class="v" id="fps">-</span></span>
 <span><span class="k">scored</span> <span class="v" id="scored">0</span></span>
 <span><span class="k">source state</span> <span class="v" id="srcstate">-</span></span>
 <span><span class="k">run</span> <span class="v" id="run">-</span></span>
</header>
<main>
 <section><img id="frame" alt="current frame" data-seq="-1">
  <h2>Recent alerts</h2><ul id="alerts"><li class="k">none yet</li></ul></section>
 <section><h2>Score (up to the last <span id="span">5</span> minutes)</h2>
  <svg id="chart" viewBox="0 0 800 300" data-points="0" role="img"
   aria-label="score over time with the threshold">
   <polyline id="line" fill="none" stroke="#4af" stroke-width="1.5" points=""/>
   <line id="thrline" x1="40" x2="790" y1="150" y2="150" stroke="#f44"
    stroke-dasharray="6 4" stroke-width="1.5"/>
   <text id="thrlabel" x="44" y="144" fill="#f66" font-size="12">threshold</text>
   <g id="marks"></g>
   <text x="40" y="296" fill="#888" font-size="12" id="xmin">-5 min</text>
   <text x="760" y="296" fill="#888" font-size="12">now</text>
   <text x="2" y="16" fill="#888" font-size="12" id="ymax"></text>
  </svg>
  <div class="k" id="backlog"></div>
 </section>
</main>
<script>
"use strict";
const qs = new URLSearchParams(location.search);
const token = qs.get("token");
const seconds = Number(qs.get("seconds") || 300);
const tok = (u) => token ? u + (u.includes("?") ? "&" : "?") + "token=" +
  encodeURIComponent(token) : u;
const $ = (id) => document.getElementById(id);
$("span").textContent = (seconds / 60).toFixed(seconds % 60 ? 1 : 0);
const X0 = 40, X1 = 790, Y0 = 10, Y1 = 280;
function fmt(v) { return v === null || v === undefined ? "-" : Number(v).toPrecision(4); }
function draw(st) {
  const thr = st.threshold, pts = st.history.filter(h => h[2] !== null && h[2] > 0);
  // log y (like dn2-plot): normal scores, the threshold and defects span decades
  const hi = Math.max(3 * thr, ...pts.map(p => p[2])) * 1.3;
  const lo = Math.max(Math.min(thr / 10, ...pts.map(p => p[2])) / 1.3, hi * 1e-4);
  const span = Math.min(seconds, Math.max(10, ...pts.map(p => -p[0])));
  $("xmin").textContent = span >= 120 ? "-" + (span / 60).toFixed(1) + " min" :
    "-" + span.toFixed(0) + " s";
  const L = (v) => Math.log(Math.max(v, lo));
  const x = (t) => X1 + (t / span) * (X1 - X0);
  const y = (s) => Y1 - (L(s) - L(lo)) / (L(hi) - L(lo)) * (Y1 - Y0);
  $("line").setAttribute("points", pts.map(p => x(p[0]).toFixed(1) + "," +
    y(p[2]).toFixed(1)).join(" "));
  $("chart").dataset.points = String(pts.length);
  const ty = y(thr).toFixed(1);
  for (const a of ["y1", "y2"]) $("thrline").setAttribute(a, ty);
  $("thrlabel").setAttribute("y", String(ty - 4));
  $("thrlabel").textContent = "threshold " + fmt(thr);
  $("ymax").textContent = fmt(hi) + " (log)";
  const marks = $("marks");
  marks.innerHTML = "";
  for (const p of pts) if (p[2] > thr) {
    const c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    c.setAttribute("cx", x(p[0]).toFixed(1)); c.setAttribute("cy", y(p[2]).toFixed(1));
    c.setAttribute("r", "2"); c.setAttribute("fill", "#f44"); marks.appendChild(c);
  }
}
function alerts(list) {
  const ul = $("alerts");
  ul.innerHTML = "";
  if (!list.length) { ul.innerHTML = '<li class="k">none yet</li>'; return; }
  for (const a of list) {
    const li = document.createElement("li");
    if (a.snapshot) {
      const im = document.createElement("img"); im.src = tok(a.snapshot); im.alt = "snapshot";
      li.appendChild(im);
    }
    const s = document.createElement("span");
    s.textContent = a.type.replace("_", " ") + " #" + a.alert_id + " at frame " + a.frame +
      ", peak " + fmt(a.peak_score) +
      (a.peak_norm_score == null ? "" : " (" + a.peak_norm_score.toFixed(2) + "x)") +
      (a.reason ? " (" + a.reason + ")" : "");
    li.appendChild(s); ul.appendChild(li);
  }
}
async function tick() {
  try {
    const r = await fetch(tok("/api/state?seconds=" + seconds), {cache: "no-store"});
    if (r.ok) {
      const st = await r.json();
      $("state").textContent = st.state; $("state").className = "badge " + st.state;
      $("source").textContent = st.source; $("run").textContent = st.run_id || "-";
      $("score").textContent = fmt(st.score); $("thr").textContent = fmt(st.threshold);
      $("norm").textContent = st.norm_score == null ? "-" : st.norm_score.toFixed(2) + "x";
      $("fps").textContent = st.fps.toFixed(1); $("scored").textContent = st.scored;
      $("srcstate").textContent = st.source_state;
      const bl = Object.entries(st.sink_backlog).filter(e => e[1] > 0);
      $("backlog").textContent = bl.length ? "waiting in spools: " +
        bl.map(e => e[0] + " " + e[1]).join(", ") : "";
      draw(st); alerts(st.alerts);
      const img = $("frame");
      if (st.seq > 0 && String(st.seq) !== img.dataset.seq) {
        img.src = tok("/latest.jpg?seq=" + st.seq); img.dataset.seq = String(st.seq);
      }
    }
  } catch (e) { $("srcstate").textContent = "server unreachable"; }
  setTimeout(tick, 500);
}
tick();
</script></body></html>
"""
