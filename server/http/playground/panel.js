// The model panel: what is served (GET /v1/model) and how the server is doing (GET /v1/stats,
// refreshed every few seconds, which also notices when the server goes away).

import { call, quietly } from "./api.js";

const REFRESH_MS = 3000;
const text = (id, value) => {
  document.getElementById(id).textContent = value;
};
const ms = (value) => (value == null ? "–" : `${value.toFixed(1)} ms`);

export async function loadModel() {
  const model = await call("model", "/v1/model");
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
