"use strict";
function f(x, d = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(d); }
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.append(td); }
  return tr;
}
async function load() {
  const s = await (await fetch("/api/blind/summary")).json();
  document.getElementById("items").textContent = s.n_items + " images: " + s.n_real + " real, " + s.n_synthetic + " synthetic";
  document.querySelector("#raters tbody").replaceChildren(...Object.entries(s.raters).map(([r, v]) => row([
    r, v.n, v.correct, f(v.accuracy), v.ci95 ? f(v.ci95[0]) + " – " + f(v.ci95[1]) : "–",
    f(v.accuracy_real), f(v.accuracy_synthetic), f(v.mask_score_real, 2), f(v.mask_score_synthetic, 2)])));
  document.querySelector("#pairs tbody").replaceChildren(...s.pairs.map(p => row([
    p.raters.join(" vs "), p.n, f(p.cohen_kappa)])));
  document.getElementById("fleiss").textContent = Object.keys(s.raters).length >= 3
    ? "Fleiss' kappa over " + s.n_common + " images all raters rated: " + f(s.fleiss_kappa)
    : "Fleiss' kappa is given for three or more raters.";
  document.body.dataset.ready = "1";
}
load();
