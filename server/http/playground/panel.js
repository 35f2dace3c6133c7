// The model panel: which model the page uses (GET /v1/models; a picker when several are served,
// the choice kept in the page's address as ?model=), what it is (GET /v1/models/{model}), and how
// the server is doing (GET /v1/stats, refreshed every few seconds, which also notices when the
// server goes away).

import { call, fail, model as route, quietly, useModel } from "./api.js";

const REFRESH_MS = 3000;
const text = (id, value) => {
  document.getElementById(id).textContent = value;
};
const ms = (value) => (value == null ? "–" : `${value.toFixed(1)} ms`);

// The model asked for in the address when it is served, else the default, else the first.
function pick({ default: fallback, models }) {
  const names = models.map((m) => m.name);
  const asked = new URLSearchParams(location.search).get("model");
  if (names.includes(asked)) return asked;
  return fallback ?? names[0];
}

function offer(models, chosen) {
  const picker = document.getElementById("model-picker");
  picker.replaceChildren(...models.map((m) => new Option(`${m.name} (v${m.version})`, m.name)));
  picker.value = chosen;
  picker.addEventListener("change", () => {
    location.search = new URLSearchParams({ model: picker.value }).toString(); // the page again, afresh
  });
  document.getElementById("model-choice").hidden = models.length < 2;
}

export async function loadModel() {
  const served = await call("model", "/v1/models");
  if (served.models.length === 0) {
    fail("model", "The server serves no model yet: reload in a moment.");
    throw new Error("no model served");
  }
  const chosen = pick(served);
  offer(served.models, chosen);
  useModel(chosen);
  const model = await call("model", route());
  text("model-name", `${model.name} v${model.version} (latent ${model.latent_dim})`);
  text("model-provider", model.execution_provider);
  const elbo = model.card.test_neg_elbo_nats;
  text("model-elbo", elbo ? `${Number(elbo).toFixed(1)} nats` : "not in the card");
  return model;
}

async function refresh() {
  const { methods } = await call("stats", "/v1/stats");
  // The HTTP routes this page calls, busiest first; the whole server's rate beside them.
  const rows = Object.entries(methods).filter(([name, m]) => name.startsWith("http.") && m.requests > 0);
  rows.sort((a, b) => (b[1].per_second ?? 0) - (a[1].per_second ?? 0));
  const total = Object.values(methods).reduce((sum, m) => sum + (m.per_second ?? 0), 0);
  const busiest = rows[0];
  text(
    "server-stats",
    busiest
      ? `${total.toFixed(1)} req/s; ${busiest[0].slice(5)} p50 ${ms(busiest[1].p50_ms)}, p99 ${ms(busiest[1].p99_ms)}`
      : `${total.toFixed(1)} req/s`,
  );
}

export function start() {
  quietly(refresh);
  setInterval(() => quietly(refresh), REFRESH_MS);
}
