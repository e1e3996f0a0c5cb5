// Review grid: keyboard accept (a) / reject (r) / undo (u); every decision is POSTed at once and written
// by the server into the set's manifest (see docs/review.md).
"use strict";
const TOKEN = document.querySelector('meta[name="review-token"]').content;
const params = new URLSearchParams(location.search);
const reviewerInput = document.getElementById("reviewer");
reviewerInput.value = params.get("reviewer") || document.querySelector('meta[name="default-reviewer"]').content;
let rows = [];
let shown = [];
let sel = 0;

function reviewer() { return reviewerInput.value.trim(); }

async function post(url, body) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-Review-Token": TOKEN},
    body: JSON.stringify(body)});
  if (!r.ok) { throw new Error(url + ": " + r.status + " " + (await r.text())); }
  return r.json();
}

function fmt(x) { return x === null || x === undefined ? "–" : Number(x).toFixed(3); }

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) { e.setAttribute(k, v); }
  for (const k of kids) { e.append(k); }
  return e;
}

function card(row, i) {
  const raw = "/file/" + row.image.split("/").map(encodeURIComponent).join("/");  // the file itself, full size
  const syn = el("figure", {}, el("a", {href: raw, target: "_blank", rel: "noopener"}, el("img", {
    src: "/overlay/" + encodeURIComponent(row.id), alt: "synthetic " + row.id, loading: "lazy"})),
  el("figcaption", {}, "synthetic + mask outline"));
  const near = row.nearest_shown
    ? el("figure", {}, el("img", {src: "/real/" + encodeURIComponent(row.nearest_id), alt: "nearest real",
      loading: "lazy"}), el("figcaption", {}, "nearest real " + row.nearest_id + " (d=" + fmt(row.nearest_distance) + ")"))
    : el("figure", {}, el("div", {class: "none"}, row.nearest_id ? "nearest: " + row.nearest_id : "no audit"),
      el("figcaption", {}, "nearest real training image"));
  const meta = el("div", {class: "meta"}, el("b", {}, row.id),
    el("span", {}, "Dice " + fmt(row.dice)), el("span", {}, "conf " + fmt(row.confidence)));
  if (row.kept === true) { meta.append(el("span", {class: "badge kept"}, "filter: kept")); }
  if (row.kept === false) { meta.append(el("span", {class: "badge dropped"}, "filter: rejected")); }
  if (row.flagged) { meta.append(el("span", {class: "badge flag"}, "near copy")); }
  meta.append(el("span", {class: "badge dec-" + (row.decision || "none"), "data-role": "decision"},
    row.decision || "undecided"));
  if (row.n_other_reviews) { meta.append(el("span", {}, row.n_other_reviews + " other reviewer(s)")); }
  const c = el("div", {class: "card" + (row.decision ? " " + row.decision : ""), "data-id": row.id,
    "data-index": String(i)}, el("div", {class: "pair"}, syn, near), meta);
  c.addEventListener("click", () => { select(i); });
  return c;
}

function filtered() {
  const show = document.getElementById("show").value;
  return rows.filter(r => show === "all" || (show === "undecided" && !r.decision) || (show === "flagged" && r.flagged)
    || (show === "dropped" && r.kept === false));
}

function render() {
  shown = filtered();
  const grid = document.getElementById("grid");
  grid.replaceChildren(...shown.map(card));
  sel = Math.min(sel, Math.max(shown.length - 1, 0));
  select(sel, false);
  status();
}

function status() {
  const acc = rows.filter(r => r.decision === "accepted").length;
  const rej = rows.filter(r => r.decision === "rejected").length;
  document.getElementById("status").textContent =
    rows.length + " samples: " + acc + " accepted, " + rej + " rejected, " + (rows.length - acc - rej) + " undecided";
}

function select(i, scroll = true) {
  document.querySelectorAll(".card.selected").forEach(c => c.classList.remove("selected"));
  sel = i;
  const c = document.querySelector('.card[data-index="' + i + '"]');
  if (c) { c.classList.add("selected"); if (scroll) { c.scrollIntoView({block: "nearest"}); } }
}

function update(id, decision) {
  const row = rows.find(r => r.id === id);
  row.decision = decision;
  const c = document.querySelector('.card[data-id="' + CSS.escape(id) + '"]');
  if (c) {
    c.classList.remove("accepted", "rejected");
    if (decision) { c.classList.add(decision); }
    const b = c.querySelector('[data-role="decision"]');
    b.className = "badge dec-" + (decision || "none");
    b.textContent = decision || "undecided";
  }
  status();
}

// Requests go out one after another in key order (queue.js); the selection moves on at once so fast typing works.
const enqueue = serialQueue("status");

function decide(decision) {
  const row = shown[sel];
  if (!row) { return; }
  if (sel < shown.length - 1) { select(sel + 1); }
  enqueue(async () => {
    await post("/api/decision", {reviewer: reviewer(), id: row.id, decision: decision});
    update(row.id, decision);
  });
}

function undo() {
  enqueue(async () => {
    const r = await post("/api/undo", {reviewer: reviewer()});
    if (r.id) { await load(); const i = shown.findIndex(x => x.id === r.id); if (i >= 0) { select(i); } }
  });
}

async function load() {
  const r = await fetch("/api/grid?reviewer=" + encodeURIComponent(reviewer()));
  const data = await r.json();
  document.getElementById("setname").textContent = data.set + " / " + data.manifest;
  rows = data.rows;
  render();
  document.body.dataset.ready = "1";
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) { return; }
  const k = e.key;
  if (k === "a") { decide("accepted"); }
  else if (k === "r") { decide("rejected"); }
  else if (k === "u") { undo(); }
  else if (k === "ArrowRight" || k === "j") { select(Math.min(sel + 1, shown.length - 1)); }
  else if (k === "ArrowLeft" || k === "k") { select(Math.max(sel - 1, 0)); }
  else if (k === "n") { const i = shown.findIndex((r, j) => j > sel && !r.decision); if (i >= 0) { select(i); } }
  else { return; }
  e.preventDefault();
});
reviewerInput.addEventListener("change", () => { load(); });
document.getElementById("show").addEventListener("change", render);
load();
