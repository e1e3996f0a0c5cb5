// Blinded real-or-synthetic test: the page only ever sees opaque tokens, never ids, paths or origins.
"use strict";
const TOKEN = document.querySelector('meta[name="review-token"]').content;
const raterInput = document.getElementById("rater");
raterInput.value = new URLSearchParams(location.search).get("rater") || "";
let items = [];
let pos = 0;
let outline = 1;

function rater() { return raterInput.value.trim(); }

const enqueue = serialQueue("progress");

async function post(url, body) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-Review-Token": TOKEN},
    body: JSON.stringify(body)});
  if (!r.ok) { throw new Error(url + ": " + r.status + " " + (await r.text())); }
  return r.json();
}

function show() {
  const img = document.getElementById("image");
  const done = items.length > 0 && items.every(it => it.call);
  document.getElementById("done").hidden = !done;
  const it = items[pos];
  if (!it) { img.hidden = true; return; }
  img.hidden = false;
  img.src = "/blind/image/" + it.token + "?outline=" + outline;
  const rated = items.filter(x => x.call).length;
  document.getElementById("progress").textContent = "image " + (pos + 1) + " / " + items.length + " (" + rated + " rated)";
  document.getElementById("real").classList.toggle("on", it.call === "real");
  document.getElementById("synthetic").classList.toggle("on", it.call === "synthetic");
  document.querySelectorAll("[data-mask]").forEach(b => b.classList.toggle("on", Number(b.dataset.mask) === it.mask));
  document.getElementById("ask").textContent = it.call ? "your call: " + it.call : "Is this image real or synthetic?";
}

function send(it) {
  const body = {rater: rater(), token: it.token, call: it.call};
  if (it.mask) { body.mask = it.mask; }
  enqueue(() => post("/api/blind/rate", body));
}

function call(c) {
  const it = items[pos];
  if (!it) { return; }
  it.call = c;
  send(it);
  if (pos < items.length - 1) { pos += 1; }
  show();
}

function mask(m) {
  const it = items[pos];
  if (!it) { return; }
  it.mask = m;
  if (it.call) { send(it); }
  show();
}

async function load() {
  if (!rater()) { return; }
  const r = await fetch("/api/blind/items?rater=" + encodeURIComponent(rater()));
  if (!r.ok) { document.getElementById("ask").textContent = "error: " + (await r.text()); return; }
  items = (await r.json()).items;
  const first = items.findIndex(it => !it.call);
  pos = first >= 0 ? first : 0;
  show();
  document.body.dataset.ready = "1";
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.ctrlKey || e.metaKey || e.altKey) { return; }
  const k = e.key;
  if (k === "r") { call("real"); }
  else if (k === "s") { call("synthetic"); }
  else if ("12345".includes(k) && k.length === 1) { mask(Number(k)); }
  else if (k === "o") { outline = 1 - outline; show(); }
  else if (k === "ArrowRight") { pos = Math.min(pos + 1, items.length - 1); show(); }
  else if (k === "ArrowLeft") { pos = Math.max(pos - 1, 0); show(); }
  else { return; }
  e.preventDefault();
});
document.getElementById("real").addEventListener("click", () => call("real"));
document.getElementById("synthetic").addEventListener("click", () => call("synthetic"));
document.querySelectorAll("[data-mask]").forEach(b => b.addEventListener("click", () => mask(Number(b.dataset.mask))));
raterInput.addEventListener("change", load);
load();
