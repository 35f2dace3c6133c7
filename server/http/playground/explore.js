// Explore: a 2-D pad over two latent directions, decoded as the pointer (or a finger, or the arrow
// keys) moves. Moves are coalesced: at most one decode in flight, and the next one always takes
// the latest position, so a fast pointer never queues stale requests.

import { call, model as route } from "./api.js";
import { paint } from "./images.js";

const pad = document.getElementById("latent-pad");
const dot = pad.querySelector(".dot");
const image = document.getElementById("latent-image");
const axisX = document.getElementById("axis-x");
const axisY = document.getElementById("axis-y");
const rate = document.getElementById("pad-rate");

const SPAN = 3; // standard deviations from the centre to an edge
let axes = []; // {label, vector, std}
let centre = [];
let position = { x: 0.5, y: 0.5 }; // fractions of the pad, y downwards
let wanted = null; // the latest position not yet decoded
let busy = false;
const done = []; // completion times (ms) in the last second

function basis(latent, i) {
  return Array.from({ length: latent }, (_, j) => (i === j ? 1 : 0));
}

// Principal directions from the model card when it has them, then the plain latent dimensions.
export function setModel(model) {
  const latent = model.latent_dim;
  const card = model.card.principal_directions ?? null;
  centre = card ? card.mean : new Array(latent).fill(0);
  const principal = card ? card.vectors.map((v, i) => ({ label: `PC${i + 1}`, vector: v, std: card.std[i] })) : [];
  const plain = Array.from({ length: latent }, (_, i) => ({ label: `z${i + 1}`, vector: basis(latent, i), std: 1 }));
  axes = [...principal, ...plain];
  for (const select of [axisX, axisY]) {
    select.replaceChildren(...axes.map((axis, i) => new Option(axis.label, String(i))));
  }
  axisX.value = "0";
  axisY.value = String(Math.min(1, axes.length - 1)); // a one-dimensional latent space has one axis
  want(position);
}

function latentAt({ x, y }) {
  const z = [...centre];
  const along = [
    [axes[Number(axisX.value)], (2 * x - 1) * SPAN],
    [axes[Number(axisY.value)], (1 - 2 * y) * SPAN],
  ];
  for (const [axis, amount] of along) {
    axis.vector.forEach((v, i) => {
      z[i] += amount * axis.std * v;
    });
  }
  return z;
}

function want(next) {
  position = next;
  dot.style.left = `${100 * next.x}%`;
  dot.style.top = `${100 * next.y}%`;
  pad.setAttribute("aria-valuetext", `${(2 * next.x - 1) * SPAN} across, ${(1 - 2 * next.y) * SPAN} up`);
  wanted = next;
  if (!busy) pump();
}

async function pump() {
  busy = true;
  while (wanted && axes.length) {
    const z = latentAt(wanted);
    wanted = null;
    const started = performance.now();
    try {
      const { x } = await call("explore", route("/decode"), { z: [z] });
      paint(image, x[0]);
    } catch {
      break; // the banner says why; the next move tries again
    }
    const now = performance.now();
    done.push(now);
    while (done[0] < now - 1000) done.shift();
    rate.textContent = `${done.length} updates/s over the last second, round trip ${(now - started).toFixed(0)} ms`;
  }
  busy = false;
}

function fromPointer(event) {
  const box = pad.getBoundingClientRect();
  const clamp = (v) => Math.min(Math.max(v, 0), 1);
  return { x: clamp((event.clientX - box.left) / box.width), y: clamp((event.clientY - box.top) / box.height) };
}

export function start() {
  pad.addEventListener("pointerdown", (event) => {
    pad.setPointerCapture(event.pointerId);
    want(fromPointer(event));
  });
  pad.addEventListener("pointermove", (event) => want(fromPointer(event)));
  pad.addEventListener("keydown", (event) => {
    const step = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[event.key];
    if (!step) return;
    event.preventDefault();
    const clamp = (v) => Math.min(Math.max(v, 0), 1);
    want({ x: clamp(position.x + step[0] / 30), y: clamp(position.y + step[1] / 30) });
  });
  for (const select of [axisX, axisY]) select.addEventListener("change", () => want(position));
}
