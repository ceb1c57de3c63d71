// The search page: text or photo queries, filter chips from /api/facets, a result grid, "more like
// this". State lives in the URL (?q=, ?like=, ?scenario=, ?filter=), so a result can be linked.
const $ = id => document.getElementById(id);
const el = (tag, attrs = {}, text = "") => Object.assign(document.createElement(tag), attrs, text ? {textContent: text} : {});
let filters = new Map(), lastPhoto = null;

function state() {
  const params = new URLSearchParams(location.search);
  return {q: params.get("q"), like: params.get("like"), scenario: params.get("scenario") || $("scenario").value};
}

function query(extra) {
  const params = new URLSearchParams({k: "24"});
  if ($("scenario").value) params.set("scenario", $("scenario").value);
  for (const [key, value] of filters) params.append("filter", key + ":" + value);
  for (const [key, value] of Object.entries(extra)) params.set(key, value);
  return params;
}

function show(body) {
  $("results").replaceChildren(...body.results.map(hit => {
    const card = el("div", {className: "card"});
    card.dataset.productId = hit.product_id;
    const attrs = el("div", {className: "attrs"});
    for (const [name, value] of Object.entries(hit.attributes)) {
      attrs.append(hit.filled.includes(name) ? el("i", {title: "filled in by the attribute classifier"}, value) : value, " ");
    }
    const more = el("a", {href: "?" + new URLSearchParams({like: hit.product_id, scenario: body.scenario}), className: "more"}, "more like this");
    card.append(el("img", {src: hit.image_url, alt: hit.title, loading: "lazy"}), el("div", {className: "title"}, hit.title),
                el("div", {className: "score"}, "score " + hit.score.toFixed(3)), attrs, more);
    return card;
  }));
  $("status").textContent = body.results.length + " results" + (body.query.text ? " for “" + body.query.text + "”" :
                            body.query.like ? " like " + body.query.like : " for your photo");
  document.body.dataset.state = "ready";
}

async function run() {
  const s = state();
  document.body.dataset.state = "busy";
  let res;
  if (lastPhoto) {
    const form = new FormData();
    form.append("image", lastPhoto, lastPhoto.name || "photo");
    res = await fetch("/api/search/image?" + query({}), {method: "POST", body: form});
  } else if (s.like) {
    res = await fetch("/api/similar/" + encodeURIComponent(s.like) + "?" + query({}));
  } else if (s.q) {
    res = await fetch("/api/search?" + query({q: s.q}));
  } else { document.body.dataset.state = "ready"; return; }
  const body = await res.json();
  if (!res.ok) {
    $("status").textContent = typeof body.detail === "string" ? body.detail : "error " + res.status;
    $("results").replaceChildren();
    document.body.dataset.state = "ready";
    return;
  }
  show(body);
}

async function chips() {
  const res = await fetch("/api/facets?" + new URLSearchParams($("scenario").value ? {scenario: $("scenario").value} : {}));
  const body = await res.json();
  if (!$("scenario").options.length) {
    for (const name of body.scenarios) $("scenario").append(el("option", {value: name}, name));
    const wanted = new URLSearchParams(location.search).get("scenario");
    if (wanted) $("scenario").value = wanted;
  }
  $("chips").replaceChildren(...Object.entries(body.attributes).map(([name, values]) => {
    const group = el("div", {className: "group"});
    group.append(el("b", {}, name));
    for (const value of Object.keys(values)) {
      const chip = el("button", {className: "chip", type: "button"}, value);
      chip.dataset.attribute = name;
      chip.addEventListener("click", () => {
        if (filters.get(name) === value) filters.delete(name); else filters.set(name, value);
        document.querySelectorAll(".chip").forEach(c => c.classList.toggle("on", filters.get(c.dataset.attribute) === c.textContent));
        run();
      });
      group.append(chip);
    }
    return group;
  }));
}

function photo(file) {
  if (!file) return;
  lastPhoto = file;
  history.pushState(null, "", "?" + new URLSearchParams({scenario: $("scenario").value}));
  run();
}

$("search").addEventListener("submit", e => {
  e.preventDefault();
  lastPhoto = null;
  history.pushState(null, "", "?" + new URLSearchParams({q: $("q").value.trim(), scenario: $("scenario").value}));
  run();
});
$("photo").addEventListener("change", () => photo($("photo").files[0]));
$("drop").addEventListener("dragover", e => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", e => { e.preventDefault(); $("drop").classList.remove("over"); photo(e.dataTransfer.files[0]); });
$("scenario").addEventListener("change", () => { chips(); run(); });
window.addEventListener("popstate", () => { lastPhoto = null; run(); });
chips().then(() => { $("q").value = state().q || ""; run(); });
