// Interpolate: decoded steps along the straight line between two posterior means (ends from the
// sample grid, encoded with POST .../encode, or from the Reconstruct panel).

import { call, model, quietly } from "./api.js";
import { paint, tile } from "./images.js";

const ends = { a: null, b: null }; // posterior means
const row = document.getElementById("interpolation");
const steps = document.getElementById("steps");
let next = "a"; // the end a picked sample fills

async function interpolate() {
  if (!ends.a || !ends.b) return;
  const n = Math.min(Math.max(Number(steps.value) || 8, 3), 16);
  const z = Array.from({ length: n }, (_, i) => ends.a.map((a, j) => a + ((ends.b[j] - a) * i) / (n - 1)));
  const { x } = await call("interpolate", model("/decode"), { z });
  row.replaceChildren(...x.map((image, i) => tile(image, `Step ${i + 1} of ${n}`)));
}

async function setEnd(end, mean) {
  ends[end] = mean;
  const { x } = await call("interpolate", model("/decode"), { z: [mean] });
  paint(document.getElementById(`end-${end}`), x[0]);
  await interpolate();
}

// A picked sample (an image row): encoded, then the next end in turn.
export async function pick(image) {
  const end = next;
  next = next === "a" ? "b" : "a";
  const { mean } = await call("interpolate", model("/encode"), { x: [image] });
  await setEnd(end, mean[0]);
}

export function start(latestMean) {
  for (const end of ["a", "b"]) {
    document.getElementById(`use-${end}`).addEventListener("click", () => {
      const mean = latestMean();
      if (mean) quietly(() => setEnd(end, mean));
    });
  }
  steps.addEventListener("change", () => quietly(interpolate));
}
