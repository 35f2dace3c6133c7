// Calls to the REST API (/v1) of the server that served this page, and the one place failures
// are shown: every call that fails says why in the error banner, and clears its own message when
// it next succeeds. The panels call the routes of the model picked (`/v1/models/{model}/...`).

const banner = document.getElementById("error");
const failures = new Map(); // source -> message, latest last
let base = "/v1"; // the picked model's routes, once panel.js has picked one

export function useModel(name) {
  base = `/v1/models/${encodeURIComponent(name)}`;
}

// The path of one of the picked model's routes: `model("/decode")`.
export function model(route = "") {
  return `${base}${route}`;
}

function show() {
  const messages = [...failures.values()].reverse();
  banner.textContent = messages.join("\n");
  banner.hidden = messages.length === 0;
}

export function fail(source, message) {
  failures.delete(source);
  failures.set(source, message);
  show();
}

export function ok(source) {
  if (failures.delete(source)) show();
}

async function explain(response) {
  let detail = response.statusText;
  try {
    detail = (await response.json()).error ?? detail;
  } catch {
    // not JSON: the status line says enough
  }
  if (response.status === 503) return `The server is unavailable (503, draining or overloaded): ${detail}`;
  if (response.status === 429) return `The server is busy (429): ${detail}`;
  if (response.status < 500) return `Request refused (${response.status}): ${detail}`;
  return `Server error (${response.status}): ${detail}`;
}

// `body`: an object (sent as JSON) or a File / Blob (sent as it is, with its own type).
export async function call(source, path, body = undefined) {
  const init = { headers: { accept: "application/json" } };
  if (body instanceof Blob) {
    Object.assign(init, { method: "POST", body, headers: { ...init.headers, "content-type": body.type } });
  } else if (body !== undefined) {
    const headers = { ...init.headers, "content-type": "application/json" };
    Object.assign(init, { method: "POST", body: JSON.stringify(body), headers });
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    const message = `Cannot reach the server at ${location.origin}: it may be down or restarting.`;
    fail(source, message);
    throw new Error(message);
  }
  if (!response.ok) {
    const message = await explain(response);
    fail(source, message);
    throw new Error(message);
  }
  const reply = await response.json();
  ok(source);
  return reply;
}

// Run `work` and keep its failure on the banner (already there) instead of an unhandled rejection.
export function quietly(work) {
  return work().catch(() => undefined);
}
