// Reconstruct: draw (mouse, pen or finger) or drop / upload a PNG or JPEG; the page encodes it and
// shows the decoded posterior mean and a few posterior draws. A drawing is sent as JSON rows
// (POST .../reconstruct); a file is sent as it is, for the server to read (the API's uploads).

import { call, model, quietly } from "./api.js";
import { inColour, paint, rowFrom, tile } from "./images.js";

const canvas = document.getElementById("draw-canvas");
const context = canvas.getContext("2d");
const reconstruction = document.getElementById("reconstruction");
const posterior = document.getElementById("posterior");
const upload = document.getElementById("upload");
const ink = document.getElementById("ink"); // offered for a colour model; a grey one draws white
const POSTERIOR_DRAWS = 6;
let last = null; // the latest encoding: {mean, logvar}
let stroke = null; // the previous point of the stroke being drawn

function clear() {
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
}

async function reconstruct(body) {
  const { mean, logvar, x } = await call("reconstruct", model("/reconstruct"), body);
  paint(reconstruction, x[0]);
  last = { mean: mean[0], logvar: logvar[0] };
  for (const id of ["use-a", "use-b"]) document.getElementById(id).disabled = false;
  const draws = await call("reconstruct", model("/sample"), {
    num_samples: POSTERIOR_DRAWS,
    mean: [last.mean],
    logvar: [last.logvar],
  });
  posterior.replaceChildren(...draws.x[0].map((row, i) => tile(row, `Posterior draw ${i + 1}`)));
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [((event.clientX - box.left) * canvas.width) / box.width, ((event.clientY - box.top) * canvas.height) / box.height];
}

function line(to) {
  context.strokeStyle = inColour() ? ink.value : "#fff";
  context.lineWidth = canvas.width / 12;
  context.lineCap = "round";
  context.lineJoin = "round";
  context.beginPath();
  context.moveTo(...(stroke ?? to));
  context.lineTo(...to);
  context.stroke();
  stroke = to;
}

async function fromFile(file) {
  if (!file) return;
  const picture = await createImageBitmap(file).catch(() => null);
  if (picture) {
    // a preview only (the server reads the file itself); one the browser cannot read leaves the drawing
    clear();
    const scale = Math.min(canvas.width / picture.width, canvas.height / picture.height);
    const [w, h] = [picture.width * scale, picture.height * scale];
    context.drawImage(picture, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  }
  await reconstruct(file); // the server reads it (and says why when it cannot)
}

export function start() {
  document.getElementById("ink-choice").hidden = !inColour();
  clear();
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    stroke = null;
    line(point(event));
  });
  canvas.addEventListener("pointermove", (event) => {
    if (stroke) line(point(event));
  });
  const finish = () => {
    if (stroke === null) return;
    stroke = null;
    quietly(() => reconstruct({ x: [rowFrom(canvas)] }));
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  canvas.addEventListener("dragover", (event) => event.preventDefault());
  canvas.addEventListener("drop", (event) => {
    event.preventDefault();
    quietly(() => fromFile(event.dataTransfer.files[0]));
  });
  upload.addEventListener("change", () => quietly(() => fromFile(upload.files[0])));
  document.getElementById("clear-drawing").addEventListener("click", clear);
}

// The latest encoding's posterior mean, for the interpolation.
export function latestMean() {
  return last?.mean;
}
