// Sample: a grid of decoded prior draws. The page asks for the seeded draws themselves
// (GET .../sample?decode=false, the same `default_rng(seed)` draws `vae-client sample --seed`
// gets), scales them by the temperature and decodes them (POST .../decode): two plain API calls,
// and at temperature 1 exactly the client's grid.

import { call, model, quietly } from "./api.js";
import { tile } from "./images.js";

const form = document.getElementById("sample-form");
const count = document.getElementById("sample-n");
const seed = document.getElementById("sample-seed");
const temperature = document.getElementById("sample-temperature");
const shown = document.getElementById("temperature-value");
const grid = document.getElementById("sample-grid");

async function sample() {
  const n = Math.min(Math.max(Number(count.value) || 16, 4), 64);
  const t = Number(temperature.value);
  const draws = await call("sample", model(`/sample?n=${n}&seed=${Number(seed.value)}&decode=false`));
  const z = draws.z.map((row) => row.map((value) => value * t));
  const { x } = await call("sample", model("/decode"), { z });
  grid.replaceChildren(
    ...x.map((row, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "pick";
      button.title = "Use as an interpolation end";
      button.append(tile(row, `Sample ${i + 1}`));
      button.addEventListener("click", () => grid.dispatchEvent(new CustomEvent("pick", { detail: row })));
      return button;
    }),
  );
}

export function start() {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    quietly(sample);
  });
  document.getElementById("new-seed").addEventListener("click", () => {
    seed.value = crypto.getRandomValues(new Uint32Array(1))[0];
    quietly(sample);
  });
  temperature.addEventListener("input", () => {
    shown.value = Number(temperature.value).toFixed(1);
  });
  temperature.addEventListener("change", () => quietly(sample));
  quietly(sample);
}

// Images picked from the grid, as rows, for the interpolation.
export function onPick(handler) {
  grid.addEventListener("pick", (event) => handler(event.detail));
}
