// The arena page's behaviour (a file of its own: the server's CSP allows no inline script).
let round = null, busy = false;
const el = (tag, attrs = {}, text = "") => Object.assign(document.createElement(tag), attrs, text ? {textContent: text} : {});

async function load(kind, q) {
  const params = new URLSearchParams({kind});
  if (q) params.set("q", q);
  const res = await fetch("api/round?" + params);
  if (!res.ok) { document.getElementById("status").textContent = "could not load a query (" + res.status + ")"; return; }
  round = await res.json();
  const query = document.getElementById("query");
  query.replaceChildren(round.query.kind === "image" ? el("img", {src: round.query.image_url, alt: "query image"})
                                                     : el("span", {}, "“" + round.query.text + "”"));
  for (const side of ["A", "B"]) {
    const row = document.getElementById("row-" + side);
    row.replaceChildren(el("h2", {}, side), ...round.rows[side].map(hit => {
      const box = el("div", {className: "hit"});
      box.append(el("img", {src: hit.image_url, alt: hit.title}), el("div", {}, hit.title));
      return box;
    }));
  }
}

async function vote(choice) {
  if (!round || busy) return;
  busy = true;
  document.body.dataset.state = "busy";
  try {
    const res = await fetch("api/vote", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify({round_id: round.round_id, choice})});
    const body = await res.json();
    document.getElementById("status").textContent = res.ok ? "recorded: " + choice : body.detail;
    if (res.ok) document.getElementById("count").textContent = body.votes;
    await load(document.querySelector("input[name=kind]:checked").value);
  } finally { busy = false; document.body.dataset.state = "ready"; }
}

document.querySelectorAll("#votes button").forEach(b => b.addEventListener("click", () => vote(b.dataset.choice)));
document.addEventListener("keydown", e => {
  if (e.target.tagName === "INPUT" && e.target.type !== "radio") return;
  const choice = {a: "A", b: "B", t: "tie", s: "skip"}[e.key.toLowerCase()];
  if (choice) vote(choice);
});
document.querySelectorAll("input[name=kind]").forEach(r => r.addEventListener("change", () => load(r.value)));
document.getElementById("typed").addEventListener("submit", e => {
  e.preventDefault();
  const q = document.getElementById("q").value.trim();
  if (q) load("text", q);
});
fetch("api/stats").then(r => r.json()).then(s => document.getElementById("count").textContent = s.votes);
load("caption");
